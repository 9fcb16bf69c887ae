//! The injection corpus: detection and false-positive rates of the untrusted-input
//! pipeline over `tests/corpus/` (injections in many disguises, and benign business
//! texts that talk about instructions, passwords and payments innocently).
//!
//! The floors asserted here are the figures the sanitizer reaches; a change that
//! lowers detection or raises false positives fails this test.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use bulwark::runtime::guard::{Sanitizer, Scan, Verdict};
use serde_json::Value;

struct Sample {
    id: String,
    category: String,
    scan: Scan,
}

fn load(file: &str, category_key: &str) -> Result<Vec<Sample>> {
    let path = format!("{}/tests/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let sanitizer = Sanitizer::default();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("{path}:{}", n + 1))?;
        let id = v["id"].as_str().context("id")?.to_string();
        let category = v[category_key].as_str().context("category")?.to_string();
        let scan = if let Some(t) = v["text"].as_str() {
            sanitizer.scan(t)
        } else if let Some(fields) = v["fields"].as_object() {
            let texts: Vec<&str> = fields.values().filter_map(Value::as_str).collect();
            sanitizer.scan_parts(&texts).1
        } else {
            bail!("{path}:{}: neither text nor fields", n + 1);
        };
        out.push(Sample { id, category, scan });
    }
    Ok(out)
}

/// Per category: (flagged, total).
fn rates(samples: &[Sample], flagged: impl Fn(&Scan) -> bool) -> BTreeMap<String, (usize, usize)> {
    let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in samples {
        let e = by.entry(s.category.clone()).or_default();
        e.1 += 1;
        if flagged(&s.scan) {
            e.0 += 1;
        }
    }
    by
}

fn total(by: &BTreeMap<String, (usize, usize)>) -> (usize, usize) {
    by.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn pct((n, d): (usize, usize)) -> f64 {
    100.0 * n as f64 / d.max(1) as f64
}

#[test]
fn corpus_detection_and_false_positive_rates() -> Result<()> {
    let injections = load("injection.jsonl", "disguise")?;
    let benign = load("benign.jsonl", "kind")?;
    assert!(
        injections.len() >= 150,
        "{} injection samples",
        injections.len()
    );
    assert!(benign.len() >= 150, "{} benign samples", benign.len());

    let flagged = |s: &Scan| s.verdict >= Verdict::Suspicious;
    let strong = |s: &Scan| s.verdict == Verdict::Injection;
    let detected = rates(&injections, flagged);
    let detected_strong = rates(&injections, strong);
    let false_pos = rates(&benign, flagged);
    let false_strong = rates(&benign, strong);

    println!("injections flagged (suspicious or injection), by disguise:");
    for (k, v) in &detected {
        println!("  {k:<22} {:>3}/{:<3} {:5.1} %", v.0, v.1, pct(*v));
    }
    println!("benign flagged, by kind:");
    for (k, v) in &false_pos {
        println!("  {k:<22} {:>3}/{:<3} {:5.1} %", v.0, v.1, pct(*v));
    }
    for s in injections.iter().filter(|s| !flagged(&s.scan)) {
        println!("missed {} ({}): score {}", s.id, s.category, s.scan.score);
    }
    for s in benign.iter().filter(|s| flagged(&s.scan)) {
        let names: Vec<&str> = s.scan.signals.iter().map(|x| x.name.as_str()).collect();
        println!(
            "false positive {} ({}): score {} {:?}",
            s.id, s.category, s.scan.score, names
        );
    }
    let (d, dt) = (pct(total(&detected)), pct(total(&detected_strong)));
    let (f, ft) = (pct(total(&false_pos)), pct(total(&false_strong)));
    println!(
        "detection {d:.1} % (injection verdict {dt:.1} %), false positives {f:.1} % (injection verdict {ft:.1} %)"
    );
    // The figures reached: 87.2 % flagged, 3.3 % of benign texts flagged, none of
    // them as `injection`.
    assert!(d >= 85.0, "detection fell to {d:.1} %");
    assert!(f <= 4.0, "false positives rose to {f:.1} %");
    assert_eq!(
        total(&false_strong).0,
        0,
        "a benign text was judged `injection`"
    );
    for (disguise, v) in &detected {
        assert!(
            pct(*v) >= 60.0,
            "{disguise}: only {:.1} % detected",
            pct(*v)
        );
    }
    Ok(())
}
