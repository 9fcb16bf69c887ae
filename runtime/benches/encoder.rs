//! The in-process guard encoder on a 2 KB message, beside the raw libraries under it
//! in the same run: the encoder's whole path (tokenizing, windows, the BERT forward
//! pass, pooling) against candle's forward pass alone on the same tokens, and the
//! pattern sanitizer on the same message. Also p50 / p99 over 200 messages and the
//! process's resident memory once the model is loaded. Run it on one core with
//! `RAYON_NUM_THREADS=1` (candle's matrix kernels follow it).

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::hint::black_box;
use std::time::Instant;

use bulwark_runtime::guard::Sanitizer;
use bulwark_runtime::guard::encoder::Encoder;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use criterion::Criterion;
use report::{fmt_ns, fmt_ratio, median_ns, publish};

/// About 2 KB of the corpus's business mail and injections, one message.
fn message() -> String {
    let path = format!(
        "{}/../tests/corpus/injection.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut out = String::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["text"].as_str() {
            out.push_str(t);
            out.push('\n');
        }
        if out.len() >= 2048 {
            break;
        }
    }
    let mut cut = 2048.min(out.len());
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
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

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let dir = Encoder::default_dir();
    let before = rss_mb();
    let encoder = Encoder::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let loaded = rss_mb();
    let text = message();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());

    // The raw library: the same model, its forward pass on already-made tokens.
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let raw = BertModel::load(vb, &config).unwrap();
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_truncation(None).unwrap();
    tokenizer.with_padding(None);
    let all = tokenizer.encode(text.as_str(), true).unwrap();
    let ids: Vec<u32> = all.get_ids().iter().copied().take(256).collect();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();

    let sanitizer = Sanitizer::default();
    let mut g = c.benchmark_group("encoder");
    g.sample_size(20);
    g.bench_function("windows_2kb", |b| {
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

    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            black_box(encoder.windows(&text).unwrap());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (times[100], times[198]);
    let windows = encoder.windows(&text).unwrap().len();
    let ours = median_ns("encoder", "windows_2kb").unwrap_or(f64::NAN);
    let raw_ns = median_ns("encoder", "raw_candle_forward_first_window").unwrap_or(f64::NAN);
    let scan = median_ns("encoder", "sanitizer_scan_2kb").unwrap_or(f64::NAN);
    let table = format!(
        "| measure ({threads} threads) | figure | raw | ratio |\n|---|---|---|---|\n\
         | encode a {} B message ({windows} window(s), {n} tokens in the first) | {} ({} per window) | candle forward alone, one {n}-token window: {} | {} per window |\n\
         | the same, p50 / p99 of 200 | {} / {} | | |\n\
         | throughput | {:.0} messages/s | | |\n\
         | pattern sanitizer on the same message | {} | | encoder / sanitizer: {} |\n\
         | resident memory: before loading / loaded | {:.0} MB / {:.0} MB | | |\n",
        text.len(),
        fmt_ns(ours),
        fmt_ns(ours / windows as f64),
        fmt_ns(raw_ns),
        fmt_ratio(ours / windows as f64 / raw_ns),
        fmt_ns(p50),
        fmt_ns(p99),
        1e9 / ours,
        fmt_ns(scan),
        fmt_ratio(ours / scan),
        before,
        loaded,
    );
    publish("bulwark-encoder.md", &table);
}
