//! `bulwark guard`: the content guards from the command line.
//!
//! `scan` runs the untrusted-input pipeline over a file, and the local guard model
//! when its files are present, and prints which detector fired, the sanitized text,
//! the score and the signals; `redact` replaces personal data and secrets with keyed
//! hashes. Both read a file or standard input. `train` trains the local model's head
//! on a labeled corpus; `eval` reports detection and false positives on one, by
//! category, for the patterns and the model.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bulwark_runtime::guard::encoder::Encoder;
use bulwark_runtime::guard::local::{
    self, CorpusItem, Embedder, EncoderKind, Labeled, LocalGuard, LocalModelConfig, TrainOptions,
};
use bulwark_runtime::guard::{PiiKind, Redactor, Sanitizer, SanitizerConfig, Scan, Verdict};
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
        /// Require the local guard model (fail when it does not load). Without
        /// `--model` or `--no-model` it runs when its files are present.
        #[arg(long, conflicts_with = "no_model")]
        model: bool,
        /// Patterns only.
        #[arg(long)]
        no_model: bool,
        #[command(flatten)]
        files: ModelFiles,
    },
    /// Train the local guard model's head on labeled JSON-lines corpora: a fifth of
    /// the texts (chosen by id) is set aside to choose the threshold on.
    Train {
        /// Corpus files (lines with id, text and label + category, or disguise/kind).
        #[arg(required = true)]
        corpus: Vec<PathBuf>,
        /// Where to write the head.
        #[arg(long)]
        out: PathBuf,
        /// The encoder: static (token embeddings) or minilm (the whole model).
        #[arg(long, default_value = "static")]
        encoder: EncoderKind,
        /// The directory of the encoder's files (default: scripts/fetch-guard-model's).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Training settings (JSON object of TrainOptions fields), e.g. '{"epochs": 80}'.
        #[arg(long)]
        options: Option<String>,
    },
    /// Detection and false-positive rates on labeled corpora, by category, for the
    /// patterns, the local model, and either.
    Eval {
        /// Corpus files.
        #[arg(required = true)]
        corpus: Vec<PathBuf>,
        #[command(flatten)]
        files: ModelFiles,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print each text the model misjudges.
        #[arg(long)]
        misses: bool,
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

/// Where the local guard model's files are.
#[derive(clap::Args)]
pub struct ModelFiles {
    /// The directory of the encoder's files (default: $BULWARK_GUARD_MODEL_DIR, else
    /// ~/.cache/bulwark/guard-model).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// A head trained by `bulwark guard train` (default: the built-in one).
    #[arg(long)]
    head: Option<PathBuf>,
}

impl ModelFiles {
    fn config(&self) -> LocalModelConfig {
        LocalModelConfig {
            dir: self.model_dir.clone(),
            head: self.head.clone(),
        }
    }

    /// Whether the encoder's files are where they would be looked for.
    fn present(&self) -> bool {
        let dir = self.model_dir.clone().unwrap_or_else(Encoder::default_dir);
        dir.join("model.safetensors").is_file()
    }
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
            model,
            no_model,
            files,
        } => {
            let text = read_text(&input)?;
            let sanitizer = Sanitizer::new(SanitizerConfig {
                max_bytes,
                ..SanitizerConfig::default()
            });
            let scan = sanitizer.scan(&text);
            let guard = if no_model || (!model && !files.present()) {
                None
            } else {
                Some(LocalGuard::load(&files.config()).context("loading the local guard model")?)
            };
            let assessment = match &guard {
                Some(g) => Some(
                    g.assess(&local::judged_text(&scan.sanitized, &scan.decoded))
                        .context("the local guard model")?,
                ),
                None => None,
            };
            let mut fired = Vec::new();
            if scan.verdict == Verdict::Injection {
                fired.push("patterns");
            }
            if assessment.as_ref().is_some_and(|a| a.injection) {
                fired.push("local_model");
            }
            if json {
                let model = match (&guard, &assessment) {
                    (Some(g), Some(a)) => json!({
                        "score": a.score, "threshold": g.head().threshold(),
                        "injection": a.injection, "evidence": a.evidence,
                        "encoder": g.head().encoder(),
                    }),
                    _ => serde_json::Value::Null,
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "fired": fired,
                        "score": scan.score,
                        "verdict": scan.verdict,
                        "signals": scan.signals,
                        "model": model,
                        "sanitized": scan.sanitized,
                        "decoded": scan.decoded,
                        "truncated": scan.truncated,
                    }))?
                );
            } else {
                println!("patterns: {} (score {})", scan.verdict, scan.score);
                for s in &scan.signals {
                    println!("  {:<32} {:>3}  {}", s.name, s.weight, s.evidence);
                }
                match (&guard, &assessment) {
                    (Some(g), Some(a)) => println!(
                        "local model: {} (score {:.3}, threshold {:.3})\n  evidence: {}",
                        if a.injection { "injection" } else { "clean" },
                        a.score,
                        g.head().threshold(),
                        a.evidence
                    ),
                    _ => println!(
                        "local model: not run ({})",
                        if no_model {
                            "--no-model"
                        } else {
                            "its files are missing: run scripts/fetch-guard-model"
                        }
                    ),
                }
                println!(
                    "fired: {}",
                    if fired.is_empty() {
                        "nothing".to_string()
                    } else {
                        fired.join(", ")
                    }
                );
                println!("--- sanitized ---\n{}", scan.sanitized);
            }
            if !fired.is_empty() {
                let names: Vec<&str> = scan.signals.iter().map(|s| s.name.as_str()).collect();
                return Ok(Outcome::Denied(format!(
                    "injection ({}): pattern score {} [{}]{}",
                    fired.join(", "),
                    scan.score,
                    names.join(", "),
                    assessment
                        .map(|a| format!(", model score {:.3}", a.score))
                        .unwrap_or_default()
                )));
            }
            Ok(Outcome::Success)
        }
        GuardCommand::Train {
            corpus,
            out,
            encoder,
            model_dir,
            options,
        } => train(&corpus, &out, encoder, model_dir, options.as_deref()),
        GuardCommand::Eval {
            corpus,
            files,
            json,
            misses,
        } => eval(&corpus, &files, json, misses),
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

fn read_corpora(paths: &[PathBuf]) -> anyhow::Result<Vec<CorpusItem>> {
    let mut items = Vec::new();
    for p in paths {
        items.extend(local::read_corpus(p).map_err(anyhow::Error::msg)?);
    }
    if items.is_empty() {
        bail!("the corpus files hold no texts");
    }
    Ok(items)
}

/// Each item's pattern scan and windows, as the runtime makes them: the model judges
/// the sanitized text and the payloads decoded from it.
fn encode(
    items: &[CorpusItem],
    embed: impl Fn(&str) -> anyhow::Result<Vec<bulwark_runtime::guard::encoder::Window>>,
) -> anyhow::Result<Vec<(Scan, Labeled)>> {
    let sanitizer = Sanitizer::default();
    let started = std::time::Instant::now();
    let mut out = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let scan = sanitizer.scan(&item.text);
        let windows = embed(&local::judged_text(&scan.sanitized, &scan.decoded))
            .with_context(|| format!("encoding {}", item.id))?;
        out.push((
            scan,
            Labeled {
                windows,
                injection: item.injection,
            },
        ));
        if (n + 1) % 250 == 0 || n + 1 == items.len() {
            eprintln!(
                "encoded {}/{} texts ({:.1} s)",
                n + 1,
                items.len(),
                started.elapsed().as_secs_f32()
            );
        }
    }
    Ok(out)
}

/// Whether an item is in the validation fifth: by its id's hash, so the split does
/// not move when texts are added.
fn in_validation(id: &str) -> bool {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes())[0] % 5 == 0
}

fn train(
    corpus: &[PathBuf],
    out: &std::path::Path,
    encoder: EncoderKind,
    model_dir: Option<PathBuf>,
    options: Option<&str>,
) -> anyhow::Result<Outcome> {
    let options: TrainOptions = match options {
        Some(o) => serde_json::from_str(o).context("--options")?,
        None => TrainOptions::default(),
    };
    let items = read_corpora(corpus)?;
    for item in &items {
        if item.category.contains("heldout") || item.id.starts_with("gh") {
            bail!(
                "{} looks like a held-out text: the held-out split is never trained on",
                item.id
            );
        }
    }
    let dir = model_dir.unwrap_or_else(Encoder::default_dir);
    let embedder = Embedder::load(encoder, &dir)?;
    let encoded = encode(&items, |t| Ok(embedder.windows(t)?))?;
    let (mut fit, mut validation) = (Vec::new(), Vec::new());
    for (item, (_, labeled)) in items.iter().zip(encoded) {
        if in_validation(&item.id) {
            validation.push(labeled);
        } else {
            fit.push(labeled);
        }
    }
    eprintln!(
        "training on {} texts, choosing the threshold on {}",
        fit.len(),
        validation.len()
    );
    let total = options.epochs * options.members.max(1);
    let every = (total / 10).max(1);
    let head = local::train(
        encoder,
        &fit,
        &validation,
        &options,
        local::corpus_digest(&items),
        |epoch, loss| {
            if epoch % every == 0 {
                eprintln!("epoch {epoch}/{total}: loss {loss:.4}");
            }
        },
    )?;
    std::fs::write(out, head.to_json()).with_context(|| format!("writing {}", out.display()))?;
    let (detected, false_positives) = head.provenance().validation;
    println!(
        "wrote {}: threshold {:.4}; on the validation split {:.1} % detected, {:.1} % false positives",
        out.display(),
        head.threshold(),
        detected * 100.0,
        false_positives * 100.0
    );
    Ok(Outcome::Success)
}

/// Per category: texts, flagged by the patterns, by the model, by either.
#[derive(Default, serde::Serialize)]
struct Tally {
    texts: usize,
    patterns: usize,
    model: usize,
    either: usize,
}

fn eval(
    corpus: &[PathBuf],
    files: &ModelFiles,
    as_json: bool,
    misses: bool,
) -> anyhow::Result<Outcome> {
    let items = read_corpora(corpus)?;
    let guard = LocalGuard::load(&files.config()).context("loading the local guard model")?;
    let head = guard.head();
    let encoded = encode(&items, |t| Ok(guard.windows(t)?))?;
    let mut by: std::collections::BTreeMap<(bool, String), Tally> = Default::default();
    let (mut attack_scores, mut benign_scores) = (Vec::new(), Vec::new());
    for (item, (scan, labeled)) in items.iter().zip(&encoded) {
        let (score, evidence) = match head.strongest(&labeled.windows)? {
            Some((k, s)) => (s, labeled.windows[k].range.clone()),
            None => (0.0, 0..0),
        };
        if item.injection {
            attack_scores.push(score);
        } else {
            benign_scores.push(score);
        }
        let model = score >= head.threshold();
        let patterns = scan.verdict == Verdict::Injection;
        let t = by
            .entry((item.injection, item.category.clone()))
            .or_default();
        t.texts += 1;
        t.patterns += usize::from(patterns);
        t.model += usize::from(model);
        t.either += usize::from(patterns || model);
        if misses && model != item.injection {
            let text = local::judged_text(&scan.sanitized, &scan.decoded);
            let shown: String = text
                .get(evidence.clone())
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            eprintln!(
                "{} {} ({}, score {score:.3}): {}",
                if item.injection {
                    "MISSED"
                } else {
                    "FALSE POSITIVE"
                },
                item.id,
                item.category,
                shown.replace('\n', " ")
            );
        }
    }
    let sum = |injection: bool| {
        by.iter()
            .filter(|((i, _), _)| *i == injection)
            .fold(Tally::default(), |mut a, (_, t)| {
                a.texts += t.texts;
                a.patterns += t.patterns;
                a.model += t.model;
                a.either += t.either;
                a
            })
    };
    let (attacks, benign) = (sum(true), sum(false));
    // What other thresholds would give on this corpus: for reading the ranking only;
    // a threshold chosen here would be tuned on the corpus.
    benign_scores.sort_by(|a, b| b.total_cmp(a));
    let curve: Vec<(f32, f32, f32)> = [0.01f32, 0.02, 0.05, 0.10]
        .iter()
        .filter(|_| !benign_scores.is_empty() && !attack_scores.is_empty())
        .map(|&fp| {
            let allowed = (fp * benign_scores.len() as f32).floor() as usize;
            let t = benign_scores.get(allowed).map_or(0.0, |s| s + 1e-6);
            let detected = attack_scores.iter().filter(|&&s| s >= t).count() as f32
                / attack_scores.len() as f32;
            (fp, t, detected)
        })
        .collect();
    if as_json {
        let rows: Vec<_> = by
            .iter()
            .map(|((i, c), t)| json!({"injection": i, "category": c, "tally": t}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "encoder": head.encoder(), "threshold": head.threshold(),
                "categories": rows, "injections": attacks, "benign": benign,
                "curve": curve.iter().map(|(fp, t, d)| json!({"false_positives": fp, "threshold": t, "detected": d})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(Outcome::Success);
    }
    let pct = |n: usize, d: usize| {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    };
    println!(
        "encoder {}, threshold {:.4}",
        head.encoder(),
        head.threshold()
    );
    for (injection, title, total) in [
        (true, "detected", &attacks),
        (false, "false positives", &benign),
    ] {
        println!(
            "\n{:<24} {:>5} {:>9} {:>9} {:>9}   ({title})",
            if injection { "injections" } else { "benign" },
            "texts",
            "patterns",
            "model",
            "either"
        );
        for ((_, c), t) in by.iter().filter(|((i, _), _)| *i == injection) {
            println!(
                "{c:<24} {:>5} {:>8.1}% {:>8.1}% {:>8.1}%",
                t.texts,
                pct(t.patterns, t.texts),
                pct(t.model, t.texts),
                pct(t.either, t.texts)
            );
        }
        println!(
            "{:<24} {:>5} {:>8.1}% {:>8.1}% {:>8.1}%",
            "all",
            total.texts,
            pct(total.patterns, total.texts),
            pct(total.model, total.texts),
            pct(total.either, total.texts)
        );
    }
    if !curve.is_empty() {
        println!("\nother thresholds on this corpus (the ranking; not a tuned result):");
        for (fp, t, d) in curve {
            println!(
                "  at {:>4.1} % false positives (threshold {t:.4}): {:.1} % detected",
                fp * 100.0,
                d * 100.0
            );
        }
    }
    Ok(Outcome::Success)
}
