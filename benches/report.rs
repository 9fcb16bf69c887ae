//! Shared by the benchmarks: reading criterion's medians back and printing ratio tables.
//! Included with `#[path]` by each crate's bench target.

#![allow(dead_code)]

/// The target directory criterion writes into.
pub fn target_dir() -> String {
    std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string())
}

/// The median of a finished benchmark, nanoseconds.
pub fn median_ns(group: &str, bench: &str) -> Option<f64> {
    let path = format!(
        "{}/criterion/{group}/{bench}/new/estimates.json",
        target_dir()
    );
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Nanoseconds for people.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// A ratio for people.
pub fn fmt_ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.4}× ({:.0}× faster)", 1.0 / r)
    } else {
        format!("{r:.2}×")
    }
}

/// Prints `table` and writes it to `target/criterion/NAME`.
pub fn publish(name: &str, table: &str) {
    println!("\n{table}");
    let _ = std::fs::write(format!("{}/criterion/{name}", target_dir()), table);
}
