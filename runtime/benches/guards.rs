//! Content-guard throughput on realistic text, beside the raw libraries underneath in
//! the same run: the sanitizer against a plain lower-casing copy plus one `regex`
//! pass (the least any scorer must do), and the redactor against one `regex` pass
//! for email addresses. Text: every message of the corpus in `tests/corpus/`
//! (business email, HTML newsletters, several languages, injections), scanned one
//! message at a time as the runtime does; and one long email of 48 KB.

#![allow(clippy::unwrap_used)] // a benchmark: any failure is a bug to see at once

#[path = "../../benches/report.rs"]
mod report;

use std::hint::black_box;
use std::time::Duration;

use bulwark_runtime::guard::{Provenance, Redactor, Sanitizer};
use criterion::{Criterion, Throughput};
use report::{median_ns, publish};

fn corpus() -> Vec<String> {
    let mut out = Vec::new();
    for file in ["benign.jsonl", "injection.jsonl"] {
        let path = format!("{}/../tests/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(t) = v["text"].as_str() {
                out.push(t.to_string());
            } else if let Some(f) = v["fields"].as_object() {
                out.push(
                    f.values()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
        }
    }
    out
}

fn long_email(corpus: &[String]) -> String {
    // Benign business text only, as a long thread would be.
    let mut s = String::new();
    for t in corpus.iter().take(180).cycle() {
        if s.len() > 48_000 {
            break;
        }
        s.push_str(t);
        s.push_str("\n\n");
    }
    s
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let messages = corpus();
    let bytes: usize = messages.iter().map(String::len).sum();
    let long = long_email(&messages);
    let sanitizer = Sanitizer::default();
    let redactor = Redactor::new([9; 32]);
    let baseline = regex::Regex::new(r"ignore (?:all )?previous instructions").unwrap();
    let email =
        regex::Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
            .unwrap();

    let mut g = c.benchmark_group("guards");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("raw_lowercase_regex_messages", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(baseline.is_match(&m.to_lowercase()));
            }
        })
    });
    g.bench_function("sanitize_messages", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(sanitizer.scan(m));
            }
        })
    });
    g.bench_function("raw_email_regex_messages", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(email.find_iter(m).count());
            }
        })
    });
    g.bench_function("redact_messages", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(redactor.redact(m));
            }
        })
    });
    // What the runtime adds per untrusted message for argument provenance: the text,
    // its tokens, numbers and identifiers remembered (a fresh record per message, as a
    // short run sees it).
    g.bench_function("provenance_messages", |b| {
        b.iter(|| {
            for m in &messages {
                let mut p = Provenance::new();
                p.observe_untrusted_from(m, "tool read_inbox");
                black_box(&p);
            }
        })
    });
    g.throughput(Throughput::Bytes(long.len() as u64));
    g.bench_function("sanitize_long_email", |b| {
        b.iter(|| black_box(sanitizer.scan(&long)))
    });
    g.bench_function("redact_long_email", |b| {
        b.iter(|| black_box(redactor.redact(&long)))
    });
    g.finish();
    c.final_summary();

    let mbps =
        |bench: &str, n: usize| median_ns("guards", bench).map(|ns| n as f64 / ns * 1e9 / 1e6);
    let row = |name: &str, bench: &str, raw: &str, n: usize| match (mbps(bench, n), mbps(raw, n)) {
        (Some(a), Some(r)) => format!(
            "| {name} | {a:.0} MB/s | {r:.0} MB/s | {:.2}× the raw time | {} |\n",
            r / a,
            if a >= 50.0 { "met" } else { "**missed**" }
        ),
        _ => format!("| {name} | (not measured) | | | |\n"),
    };
    let mut table = String::from(
        "| Guard (one core) | Throughput | Raw library | Ratio | Goal ≥ 50 MB/s |\n|---|---|---|---|---|\n",
    );
    table += &row(
        "Sanitizer, corpus messages",
        "sanitize_messages",
        "raw_lowercase_regex_messages",
        bytes,
    );
    table += &row(
        "Sanitizer, one 48 KB email",
        "sanitize_long_email",
        "raw_lowercase_regex_messages",
        long.len(),
    );
    table += &row(
        "Redactor, corpus messages",
        "redact_messages",
        "raw_email_regex_messages",
        bytes,
    );
    table += &row(
        "Redactor, one 48 KB email",
        "redact_long_email",
        "raw_email_regex_messages",
        long.len(),
    );
    table += &row(
        "Provenance record, corpus messages",
        "provenance_messages",
        "raw_email_regex_messages",
        bytes,
    );
    publish("guards-table.md", &table);
}
