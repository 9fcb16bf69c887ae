//! What a call did: its status and report, and how the report is built from the
//! store and the output pipes when the call ends, however it ends (an exit code, a
//! trap, a limit hit, a failed instantiation).

use std::time::Instant;

use serde::Serialize;
use wasmtime::{Store, Trap};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::{LimitKind, Limits, Sandbox, SandboxError, State};

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// It finished with exit code 0.
    Ok,
    /// The guest failed on its own: a non-zero exit, an uncaught exception, a trap.
    GuestError,
    /// A limit stopped it.
    Limit,
}

/// What a call did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// How it ended.
    pub status: RunStatus,
    /// The exit code (WASI commands and scripts).
    pub exit_code: Option<i32>,
    /// Standard output (lossy UTF-8), capped; truncation is marked.
    pub stdout: String,
    /// Standard error, the same way.
    pub stderr: String,
    /// The limit hit, when `status` is `limit`.
    pub limit: Option<LimitKind>,
    /// The guest's own failure (a trap message), when there is one.
    pub error: Option<String>,
    /// Results of an invoked function.
    pub results: Vec<serde_json::Value>,
    /// Wall time of the call, milliseconds.
    pub wall_ms: f64,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// The largest linear memory reached, bytes.
    pub peak_memory_bytes: u64,
    /// Whether the program ran on a pre-started interpreter.
    pub warm: bool,
}

impl RunReport {
    /// The one-line reason a failed call gives (`timeout`, `memory`, `fuel`,
    /// `output`, or the guest's failure).
    pub fn reason(&self) -> String {
        match (self.status, self.limit) {
            (RunStatus::Ok, _) => "ok".into(),
            (RunStatus::Limit, Some(l)) => format!("{l}: {}", l.describe()),
            _ => match (&self.error, self.exit_code) {
                (Some(e), _) => format!("guest error: {e}"),
                (None, Some(c)) => format!("guest error: exit code {c}"),
                (None, None) => "guest error".into(),
            },
        }
    }
}

impl Sandbox {
    /// Instantiation failed: a memory limit below the module's minimum is the memory
    /// limit; anything else (every pool slot taken, a start function that trapped
    /// aside) is the sandbox's refusal, not the guest's failure.
    pub(super) fn not_instantiated(
        e: wasmtime::Error,
        store: &mut Store<State>,
        started: Instant,
        pipes: Option<(MemoryOutputPipe, MemoryOutputPipe)>,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError> {
        if store.data().limiter.hit || e.downcast_ref::<Trap>().is_some() {
            return Ok(Self::report(e, store, started, pipes, limits, Vec::new()));
        }
        Err(SandboxError::Refused(format!(
            "the module could not be instantiated: {e:#}"
        )))
    }

    pub(super) fn report(
        e: wasmtime::Error,
        store: &mut Store<State>,
        started: Instant,
        pipes: Option<(MemoryOutputPipe, MemoryOutputPipe)>,
        limits: &Limits,
        results: Vec<serde_json::Value>,
    ) -> RunReport {
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return Self::finish(Some(exit.0), store, started, pipes, limits, results);
        }
        let trap = e.downcast_ref::<Trap>().copied();
        let mut report = Self::finish(None, store, started, pipes, limits, results);
        let limit = match trap {
            Some(Trap::Interrupt) => Some(LimitKind::Timeout),
            Some(Trap::OutOfFuel) => Some(LimitKind::Fuel),
            _ if store.data().disk.hit() => Some(LimitKind::Disk),
            _ if store.data().limiter.hit => Some(LimitKind::Memory),
            _ => None,
        };
        match limit {
            Some(l) => {
                report.status = RunStatus::Limit;
                report.limit = Some(l);
            }
            None => {
                report.status = RunStatus::GuestError;
                report.error = Some(format!("{e:#}").lines().next().unwrap_or("").to_string());
            }
        }
        report
    }

    pub(super) fn finish(
        exit: Option<i32>,
        store: &mut Store<State>,
        started: Instant,
        pipes: Option<(MemoryOutputPipe, MemoryOutputPipe)>,
        limits: &Limits,
        results: Vec<serde_json::Value>,
    ) -> RunReport {
        let fuel_left = store.get_fuel().unwrap_or(0);
        let fuel_used = store
            .data()
            .fuel_at_start
            .unwrap_or(limits.fuel.unwrap_or(u64::MAX))
            .saturating_sub(fuel_left);
        let (stdout, out_cut, stderr, err_cut) = match pipes {
            Some((o, e)) => {
                let (so, oc) = capped(&o.contents(), limits.output_bytes);
                let (se, ec) = capped(&e.contents(), limits.output_bytes);
                (so, oc, se, ec)
            }
            None => (String::new(), false, String::new(), false),
        };
        let state = store.data();
        let mut report = RunReport {
            status: if exit == Some(0) {
                RunStatus::Ok
            } else {
                RunStatus::GuestError
            },
            exit_code: exit,
            stdout,
            stderr,
            limit: None,
            error: None,
            results,
            wall_ms: started.elapsed().as_secs_f64() * 1000.0,
            fuel_used,
            peak_memory_bytes: state.limiter.peak as u64,
            warm: false,
        };
        if report.status != RunStatus::Ok && exit.is_some() {
            if out_cut || err_cut {
                report.status = RunStatus::Limit;
                report.limit = Some(LimitKind::Output);
            } else if state.limiter.hit {
                report.status = RunStatus::Limit;
                report.limit = Some(LimitKind::Memory);
            }
        } else if out_cut || err_cut {
            // Finished, but said more than it may: the output is cut and marked.
            report.status = RunStatus::Limit;
            report.limit = Some(LimitKind::Output);
        }
        report
    }
}

/// The output as text, cut at `cap` bytes (on a character boundary) and marked.
fn capped(bytes: &[u8], cap: usize) -> (String, bool) {
    if bytes.len() <= cap {
        return (String::from_utf8_lossy(bytes).into_owned(), false);
    }
    let text = String::from_utf8_lossy(&bytes[..cap]);
    let mut cut = text.into_owned();
    if cut.ends_with('\u{FFFD}') {
        cut.pop();
    }
    cut.push_str(&format!("\n[output truncated at {cap} bytes]"));
    (cut, true)
}
