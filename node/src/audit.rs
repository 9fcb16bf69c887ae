//! `bulwark audit`: verify and read a data directory's audit trail.

use std::path::PathBuf;

use anyhow::Context;
use bulwark_runtime::{AuditConfig, AuditReader, AuditReport};
use clap::Subcommand;

use crate::Outcome;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every keyed hash link and the trail against its signed checkpoints;
    /// exit 0 when intact, 3 naming the first bad entry and why.
    Verify {
        /// The runtime's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The audit key file, when it is kept outside the data directory (default
        /// DATA_DIR/audit.key).
        #[arg(long)]
        audit_key: Option<PathBuf>,
        /// The checkpoint file, when the runtime was configured to write it elsewhere
        /// (default DATA_DIR/audit.checkpoints).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// A copy of checkpoint lines kept outside the data directory (an external
        /// anchor) to check the trail against as well.
        #[arg(long)]
        anchor: Option<PathBuf>,
    },
    /// Show the latest entries.
    Tail {
        /// The runtime's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<Outcome> {
    match cmd {
        AuditCommand::Verify {
            data_dir,
            audit_key,
            checkpoints,
            anchor,
        } => {
            let mut config = AuditConfig::default();
            if let Some(k) = audit_key {
                config = config.key_file(k);
            }
            if let Some(c) = checkpoints {
                config = config.checkpoint_file(c);
            }
            if let Some(a) = anchor {
                config = config.anchor_file(a);
            }
            let report = open(&data_dir, &config)?
                .report()
                .context("verifying the audit trail")?;
            print_report(&report);
            match report.problems.first() {
                None => Ok(Outcome::Success),
                Some(p) => Ok(Outcome::Denied(format!(
                    "audit trail broken at entry {}: {}",
                    p.seq, p.reason
                ))),
            }
        }
        AuditCommand::Tail {
            data_dir,
            lines,
            json,
        } => {
            for e in open(&data_dir, &AuditConfig::default())?.tail(lines)? {
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    let at = humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
                    );
                    println!(
                        "{:>6} {at} {:<16} {:<16} {}",
                        e.seq, e.record.kind, e.record.agent, e.record.detail
                    );
                }
            }
            Ok(Outcome::Success)
        }
    }
}

fn print_report(r: &AuditReport) {
    if r.problems.is_empty() {
        println!("intact: {} entries", r.entries);
    } else {
        println!("broken: {} entries stored", r.entries);
    }
    match &r.key {
        Some(key) if r.legacy_entries < r.entries => {
            println!("keyed chain: HMAC-SHA256 under the audit key (checkpoint key {key})");
        }
        _ => {}
    }
    if r.legacy_entries > 0 {
        println!(
            "unkeyed: the first {} entries are in format 1 (an earlier release){}",
            r.legacy_entries,
            if r.legacy_entries == r.entries {
                "; nothing protects them against rewriting until they are migrated"
            } else {
                ", sealed by the migration that follows them"
            }
        );
    }
    match &r.last_checkpoint {
        Some(c) => println!(
            "checkpoints: {} verified; the latest covers {} entries (head {}), signed at {}",
            r.checkpoints,
            c.len,
            c.head,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.at_ms)
            )
        ),
        None => println!(
            "checkpoints: none verified; entries removed from the end cannot be detected without one (keep copies of the checkpoint file elsewhere)"
        ),
    }
    for a in &r.accepted {
        println!(
            "accepted break: entry {} did not verify; an operator override at entry {} started the runtime anyway ({})",
            a.broken_at, a.override_at, a.reason
        );
    }
    for p in r.problems.iter().skip(1) {
        println!("also broken at entry {}: {}", p.seq, p.reason);
    }
}

fn open(dir: &std::path::Path, config: &AuditConfig) -> anyhow::Result<AuditReader> {
    AuditReader::open_with(dir, config).with_context(|| {
        format!(
            "opening the audit trail in {} (is a runtime still running on it?)",
            dir.display()
        )
    })
}
