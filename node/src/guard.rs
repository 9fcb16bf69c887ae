//! `bulwark guard`: the content guards from the command line.
//!
//! `scan` runs the untrusted-input pipeline over a file and prints the sanitized
//! text, the injection score and the signals; `redact` replaces personal data and
//! secrets with keyed hashes. Both read a file or standard input.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bulwark_runtime::guard::{PiiKind, Redactor, Sanitizer, SanitizerConfig, Verdict};
use clap::Subcommand;
use serde_json::json;

use crate::Outcome;

/// The most input read (the sanitizer then keeps at most `--max-bytes`).
const INPUT_LIMIT: u64 = 16 << 20;

#[derive(Subcommand)]
pub enum GuardCommand {
    /// Sanitize and score text as the runtime does before a model sees it. Exit 0 for
    /// clean or suspicious, 3 for injection.
    Scan {
        /// The file, or - for standard input.
        input: String,
        /// Print {score, verdict, signals, sanitized} as JSON.
        #[arg(long)]
        json: bool,
        /// Keep at most this many bytes (the runtime's default is 65536).
        #[arg(long, default_value_t = SanitizerConfig::default().max_bytes)]
        max_bytes: usize,
    },
    /// Replace personal data and secrets with [REDACTED:KIND:HASH].
    Redact {
        /// The file, or - for standard input.
        input: String,
        /// Only these kinds (comma-separated): email, phone, national_id, passport,
        /// bank_account, card, iban, api_key, private_key. Default: all.
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
        /// Hash under this runtime's key (its data directory), so the marks match its
        /// audit trail. Default: a key made for this run only.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print {text, findings} as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn read_text(source: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    if source == "-" {
        std::io::stdin()
            .take(INPUT_LIMIT + 1)
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(source)
            .and_then(|f| f.take(INPUT_LIMIT + 1).read_to_end(&mut bytes))
            .with_context(|| format!("reading {source}"))?;
    }
    if bytes.len() as u64 > INPUT_LIMIT {
        bail!("{source}: more than {INPUT_LIMIT} bytes");
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{source} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

pub fn run(cmd: GuardCommand) -> anyhow::Result<Outcome> {
    match cmd {
        GuardCommand::Scan {
            input,
            json,
            max_bytes,
        } => {
            let text = read_text(&input)?;
            let sanitizer = Sanitizer::new(SanitizerConfig {
                max_bytes,
                ..SanitizerConfig::default()
            });
            let scan = sanitizer.scan(&text);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "score": scan.score,
                        "verdict": scan.verdict,
                        "signals": scan.signals,
                        "sanitized": scan.sanitized,
                        "decoded": scan.decoded,
                        "truncated": scan.truncated,
                    }))?
                );
            } else {
                println!("verdict: {} (score {})", scan.verdict, scan.score);
                for s in &scan.signals {
                    println!("  {:<32} {:>3}  {}", s.name, s.weight, s.evidence);
                }
                println!("--- sanitized ---\n{}", scan.sanitized);
            }
            if scan.verdict == Verdict::Injection {
                let names: Vec<&str> = scan.signals.iter().map(|s| s.name.as_str()).collect();
                return Ok(Outcome::Denied(format!(
                    "scored {} (injection): {}",
                    scan.score,
                    names.join(", ")
                )));
            }
            Ok(Outcome::Success)
        }
        GuardCommand::Redact {
            input,
            kinds,
            data_dir,
            json,
        } => {
            let text = read_text(&input)?;
            let key = match &data_dir {
                Some(dir) => bulwark_runtime::redaction_key(dir)?,
                None => rand_key(),
            };
            let mut redactor = Redactor::new(key);
            if let Some(kinds) = kinds {
                let kinds = kinds
                    .iter()
                    .map(|k| k.trim().parse::<PiiKind>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?;
                redactor = redactor.with_kinds(kinds);
            }
            let out = redactor.redact(&text);
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", out.text);
                if !out.text.ends_with('\n') {
                    println!();
                }
                eprintln!("{} values redacted", out.findings.len());
            }
            Ok(Outcome::Success)
        }
    }
}

fn rand_key() -> [u8; 32] {
    rand::random()
}
