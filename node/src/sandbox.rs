//! `bulwark sandbox run`: runs a Python script, a JavaScript program or a WebAssembly
//! module in the sandbox, with limits, and reports how it ended.
//!
//! Exit codes: 0 when the program finished with exit code 0 (its stdout is printed);
//! 1 when the guest failed on its own; 4 when a limit stopped it; 2 for unusable
//! input. Failures print one line on stderr naming the reason (`timeout`, `memory`,
//! `fuel`, `output`, `disk`, or the guest's failure). `--json` prints `{status, exit_code,
//! stdout, stderr, limit, wall_ms, fuel_used, peak_memory_bytes}` instead.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bulwark_runtime::sandbox::{
    Limits, Mount, Program, RunRequest, RunStatus, Sandbox, SandboxConfig,
};
use clap::{Args, Subcommand};

use crate::Outcome;

/// Exit code when a limit stopped the program.
pub const EXIT_LIMIT: u8 = 4;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Run a program in the sandbox.
    Run(RunArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("program").required(true).args(["python", "js", "wasm"])))]
pub struct RunArgs {
    /// A Python script (CPython 3.12 on WASI).
    #[arg(long)]
    python: Option<PathBuf>,
    /// A JavaScript program (QuickJS on WASI).
    #[arg(long)]
    js: Option<PathBuf>,
    /// A WebAssembly module (.wasm or .wat): a WASI command, or see --invoke.
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Call this exported function instead of `_start`; ARGS are its numbers.
    #[arg(long, requires = "wasm")]
    invoke: Option<String>,
    /// Arguments of the invoked function.
    #[arg(requires = "invoke")]
    args: Vec<String>,
    /// Linear memory limit (e.g. 64MiB).
    #[arg(long, default_value = "128MiB")]
    memory: String,
    /// Wall-clock limit (e.g. 2s, 500ms).
    #[arg(long, default_value = "3s")]
    timeout: String,
    /// Fuel limit (roughly, instructions).
    #[arg(long)]
    fuel: Option<u64>,
    /// Cap on each of stdout and stderr (e.g. 1MiB).
    #[arg(long, default_value = "1MiB")]
    output: String,
    /// Bytes the scratch directory (/scratch) may hold (e.g. 16MiB); a sparse file
    /// counts at its full length.
    #[arg(long, default_value = "64MiB")]
    disk: String,
    /// Files, directories and links the scratch directory may hold.
    #[arg(long, default_value_t = 1024)]
    disk_files: u64,
    /// A read-only mount, HOST_DIR:GUEST_DIR:ro (repeatable).
    #[arg(long)]
    mount: Vec<String>,
    /// A file whose contents are the program's standard input.
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// Print a JSON report instead of the program's output.
    #[arg(long)]
    json: bool,
    /// Where the interpreters are (default: $BULWARK_INTERPRETERS, then
    /// ~/.cache/bulwark/interpreters).
    #[arg(long)]
    interpreters: Option<PathBuf>,
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `100MB`, `4096`.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a size such as 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        other => bail!("unknown size unit `{other}` in `{text}` (use KiB, MiB, GiB)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("`{text}` is too large"))
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

pub fn run(cmd: SandboxCommand) -> anyhow::Result<Outcome> {
    let SandboxCommand::Run(a) = cmd;
    let limits = Limits {
        memory_bytes: parse_size(&a.memory)?,
        timeout: humantime::parse_duration(&a.timeout)
            .with_context(|| format!("--timeout `{}`", a.timeout))?,
        fuel: a.fuel,
        output_bytes: usize::try_from(parse_size(&a.output)?).context("--output is too large")?,
        disk_bytes: parse_size(&a.disk).context("--disk")?,
        disk_files: a.disk_files,
        ..Limits::default()
    };
    let program = if let Some(p) = &a.python {
        Program::Python(String::from_utf8(read(p, "script")?).context("the script is not UTF-8")?)
    } else if let Some(p) = &a.js {
        Program::JavaScript(
            String::from_utf8(read(p, "script")?).context("the script is not UTF-8")?,
        )
    } else if let Some(p) = &a.wasm {
        Program::Wasm {
            module: Arc::new(read(p, "module")?),
            invoke: a.invoke.clone(),
        }
    } else {
        bail!("one of --python, --js or --wasm is required");
    };
    let mounts = a
        .mount
        .iter()
        .map(|m| Mount::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let stdin = match &a.stdin {
        Some(p) => read(p, "stdin file")?,
        None => Vec::new(),
    };
    let sandbox = Sandbox::new(SandboxConfig {
        interpreters: a.interpreters.clone(),
        max_instances: 4,
        ..SandboxConfig::default()
    })?;
    let report = sandbox.run_blocking(&RunRequest {
        program,
        args: a.args.clone(),
        stdin,
        mounts,
        files: Vec::new(),
        limits,
        host: None,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(report.stdout.as_bytes())?;
        for r in &report.results {
            writeln!(out, "{r}")?;
        }
        out.flush()?;
        std::io::stderr().write_all(report.stderr.as_bytes())?;
    }
    Ok(match report.status {
        RunStatus::Ok => Outcome::Success,
        RunStatus::GuestError => Outcome::Exit(1, report.reason()),
        RunStatus::Limit => Outcome::Exit(EXIT_LIMIT, report.reason()),
    })
}
