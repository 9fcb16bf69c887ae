//! `bulwark audit`: verify and read a data directory's audit trail.

use std::path::PathBuf;

use anyhow::Context;
use bulwark_runtime::{AuditReader, Verification};
use clap::Subcommand;

use crate::Outcome;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every hash link; exit 0 when intact, 3 naming the first bad entry.
    Verify {
        /// The runtime's data directory.
        #[arg(long)]
        data_dir: PathBuf,
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
        AuditCommand::Verify { data_dir } => {
            let reader = open(&data_dir)?;
            match reader.verify()? {
                Verification::Intact(n) => {
                    println!("intact: {n} entries");
                    Ok(Outcome::Success)
                }
                Verification::Broken { seq, reason } => Ok(Outcome::Denied(format!(
                    "audit trail broken at entry {seq}: {reason}"
                ))),
            }
        }
        AuditCommand::Tail {
            data_dir,
            lines,
            json,
        } => {
            for e in open(&data_dir)?.tail(lines)? {
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

fn open(dir: &std::path::Path) -> anyhow::Result<AuditReader> {
    AuditReader::open(dir).with_context(|| {
        format!(
            "opening the audit trail in {} (is a runtime still running on it?)",
            dir.display()
        )
    })
}
