//! The in-process guard model on a 2 KB message, beside the raw libraries under it
//! in the same run:
//!
//! - the local guard as the runtime runs it (the shipped head's encoder, windows,
//!   the head), uncached, against the tokenizer alone on the same message;
//! - the whole MiniLM encoder (tokenizing, 256-token windows, the BERT forward pass,
//!   pooling) against candle's forward pass alone on one window;
//! - the pattern sanitizer on the same message.
//!
//! Also p50 / p99 over 200 different messages, throughput, and the process's
//! resident memory after each load. Run it on one core with `RAYON_NUM_THREADS=1`
//! (candle's matrix kernels follow it).

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::hint::black_box;
use std::time::Instant;

use bulwark_runtime::guard::encoder::Encoder;
use bulwark_runtime::guard::{LocalGuard, LocalModelConfig, Sanitizer};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use criterion::Criterion;
use report::{fmt_ns, fmt_ratio, median_ns, publish};

/// The corpus's business mail and injections, one after another.
fn corpus_text() -> String {
    let mut out = String::new();
    for file in ["injection.jsonl", "benign.jsonl"] {
        let path = format!("{}/../tests/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(t) = v["text"].as_str() {
                out.push_str(t);
                out.push('\n');
            }
        }
    }
    out
}

/// About 2 KB of `all` from byte `from` (on character boundaries).
fn message(all: &str, from: usize) -> String {
    let mut start = from.min(all.len());
    while !all.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + 2048).min(all.len());
    while !all.is_char_boundary(end) {
        end -= 1;
    }
    all[start..end].to_string()
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// p50 and p99 of `f` over 200 different messages, nanoseconds.
fn percentiles(all: &str, mut f: impl FnMut(&str)) -> (f64, f64) {
    let step = (all.len().saturating_sub(2048) / 200).max(1);
    let mut times: Vec<f64> = (0..200)
        .map(|i| {
            let m = message(all, i * step);
            let t = Instant::now();
            f(&m);
            t.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[100], times[198])
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let dir = Encoder::default_dir();
    let all = corpus_text();
    let text = message(&all, 0);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());

    let before = rss_mb();
    let guard = LocalGuard::load(&LocalModelConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let guard_loaded = rss_mb();
    let kind = guard.head().encoder();
    let encoder = Encoder::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let minilm_loaded = rss_mb();

    // The raw libraries: the tokenizer alone, and the model's forward pass on
    // already-made tokens.
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_truncation(None).unwrap();
    tokenizer.with_padding(None);
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let raw = BertModel::load(vb, &config).unwrap();
    let all_ids = tokenizer.encode(text.as_str(), true).unwrap();
    let ids: Vec<u32> = all_ids.get_ids().iter().copied().take(256).collect();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();

    let sanitizer = Sanitizer::default();
    let local = |t: &str| {
        let windows = guard.windows(t).unwrap();
        guard.head().strongest(&windows).unwrap()
    };
    let mut g = c.benchmark_group("encoder");
    g.sample_size(20);
    g.bench_function("local_guard_2kb", |b| b.iter(|| local(black_box(&text))));
    g.bench_function("raw_tokenizer_2kb", |b| {
        b.iter(|| tokenizer.encode(black_box(text.as_str()), false).unwrap())
    });
    g.bench_function("minilm_windows_2kb", |b| {
        b.iter(|| encoder.windows(black_box(&text)).unwrap())
    });
    g.bench_function("raw_candle_forward_first_window", |b| {
        b.iter(|| raw.forward(black_box(&ids), &types, None).unwrap())
    });
    g.bench_function("sanitizer_scan_2kb", |b| {
        b.iter(|| sanitizer.scan(black_box(&text)))
    });
    g.finish();
    c.final_summary();

    let (local_p50, local_p99) = percentiles(&all, |m| {
        black_box(local(m));
    });
    let (minilm_p50, minilm_p99) = percentiles(&all, |m| {
        black_box(encoder.windows(m).unwrap());
    });
    let windows = encoder.windows(&text).unwrap().len();
    let med = |b: &str| median_ns("encoder", b).unwrap_or(f64::NAN);
    let (ours, tok) = (med("local_guard_2kb"), med("raw_tokenizer_2kb"));
    let (minilm, raw_ns) = (
        med("minilm_windows_2kb"),
        med("raw_candle_forward_first_window"),
    );
    let scan = med("sanitizer_scan_2kb");
    let table = format!(
        "| measure ({threads} threads, {} B message) | figure | raw library, same run | ratio |\n|---|---|---|---|\n\
         | local guard ({kind} encoder + head), uncached | {} | tokenizers' encode alone: {} | {} |\n\
         | the same, p50 / p99 of 200 messages | {} / {} | | |\n\
         | the same, throughput on one core | {:.0} messages/s ({:.1} MB/s) | | |\n\
         | whole MiniLM encoder ({windows} windows) | {} ({} per window) | candle forward alone, one {n}-token window: {} | {} per window |\n\
         | the same, p50 / p99 of 200 messages | {} / {} | | |\n\
         | pattern sanitizer | {} | | local guard / sanitizer: {} |\n\
         | resident memory: before / local guard loaded / MiniLM loaded too | {:.0} MB / {:.0} MB / {:.0} MB | | |\n",
        text.len(),
        fmt_ns(ours),
        fmt_ns(tok),
        fmt_ratio(ours / tok),
        fmt_ns(local_p50),
        fmt_ns(local_p99),
        1e9 / ours,
        text.len() as f64 * 1e3 / ours,
        fmt_ns(minilm),
        fmt_ns(minilm / windows as f64),
        fmt_ns(raw_ns),
        fmt_ratio(minilm / windows as f64 / raw_ns),
        fmt_ns(minilm_p50),
        fmt_ns(minilm_p99),
        fmt_ns(scan),
        fmt_ratio(ours / scan),
        before,
        guard_loaded,
        minilm_loaded,
    );
    publish("bulwark-encoder.md", &table);
}
