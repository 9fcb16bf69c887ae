//! Warm Python starts: CPython instances started ahead of time, each blocked reading
//! its standard input for the one script it will run. A call takes one, hands it the
//! script, and a replacement starts in the background; the call does not pay
//! interpreter start-up. Each instance runs exactly one script and is then dropped,
//! so nothing a script does survives into another call.
//!
//! Only calls with the pool's limits, no fuel limit and no mounts use it (an
//! instance's limits and mounts are fixed when it starts); others start cold, through
//! the same loader.

use crate::sync::LockExt;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use wasmtime_wasi::cli::AsyncStdinStream;

use super::{
    Interpreter, Limits, Program, RunReport, RunRequest, Sandbox, SandboxError, python_argv,
    python_frame,
};

/// The loader CPython runs (`-c`): it reads one frame from stdin — two little-endian
/// u64 lengths, the script, the script's own stdin — and runs the script as
/// `__main__` from /scratch, in a fresh namespace. It exits with `os._exit` after
/// flushing: interpreter finalization would double the cost of a short script, and
/// the instance is discarded anyway. Exit codes follow Python's (`SystemExit`, 1 for
/// an uncaught exception, with its traceback on stderr).
pub(crate) const PYTHON_LOADER: &str = "\
import sys, os, io
sys.stderr.write('\\0')
sys.stderr.flush()
_b = sys.stdin.buffer
_h = _b.read(16)
if len(_h) < 16:
    raise SystemExit(70)
_n = int.from_bytes(_h[:8], 'little')
_m = int.from_bytes(_h[8:], 'little')
_src = _b.read(_n)
sys.stdin = io.TextIOWrapper(io.BytesIO(_b.read(_m)), encoding='utf-8')
sys.argv = ['/scratch/main.py']
os.chdir('/scratch')
_g = {'__name__': '__main__', '__file__': '/scratch/main.py', '__builtins__': __builtins__}
del _b, _h, _n, _m
try:
    exec(compile(_src, '/scratch/main.py', 'exec'), _g)
    _code = 0
except SystemExit as _e:
    _code = _e.code
    if _code is None:
        _code = 0
    elif not isinstance(_code, int):
        print(_code, file=sys.stderr)
        _code = 1
except BaseException:
    import traceback
    traceback.print_exc()
    _code = 1
sys.stdout.flush()
sys.stderr.flush()
os._exit(_code)
";

struct Warm {
    /// The interpreter's stderr: its first byte, a NUL, says it is waiting for input.
    stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    writer: tokio::io::WriteHalf<tokio::io::SimplexStream>,
    deadline: Arc<AtomicU64>,
    scratch: PathBuf,
    done: tokio::task::JoinHandle<Result<RunReport, SandboxError>>,
}

pub(crate) struct WarmPool {
    target: usize,
    limits: Limits,
    ready: Mutex<VecDeque<Warm>>,
    starting: AtomicUsize,
}

impl WarmPool {
    pub fn new(target: usize) -> Self {
        WarmPool {
            target,
            limits: Limits::default(),
            ready: Mutex::new(VecDeque::new()),
            starting: AtomicUsize::new(0),
        }
    }

    /// How many instances have started or are starting.
    pub fn ready(&self) -> usize {
        self.ready.lock_or_recover().len()
    }

    /// How many instances are waiting for their script (start-up done).
    pub fn waiting(&self) -> usize {
        self.ready
            .lock_or_recover()
            .iter()
            .filter(|w| !w.stderr.contents().is_empty())
            .count()
    }
}

/// Starts instances until the pool holds its target (must be called on a runtime).
pub(crate) fn fill(sb: &Arc<Sandbox>) {
    let pool = &sb.warm;
    while pool.ready() + pool.starting.load(Ordering::SeqCst) < pool.target {
        pool.starting.fetch_add(1, Ordering::SeqCst);
        match start(sb) {
            Ok(w) => pool.ready.lock_or_recover().push_back(w),
            Err(e) => {
                tracing::warn!(error = %e, "could not pre-start a Python interpreter");
                pool.starting.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
        pool.starting.fetch_sub(1, Ordering::SeqCst);
    }
}

fn start(sb: &Arc<Sandbox>) -> Result<Warm, SandboxError> {
    let compiled = sb.interpreter(Interpreter::Python)?;
    let limits = sb.warm.limits.clone();
    let (reader, writer) = tokio::io::simplex(64 * 1024);
    let req = RunRequest::new(Program::Python(String::new()));
    let (ctx, scratch, pipes) =
        sb.wasi_ctx(&python_argv(), AsyncStdinStream::new(reader), &req, &limits)?;
    let store = sb.store(Some((ctx, scratch.path())), &limits)?;
    let deadline = store.data().deadline.clone();
    let path = scratch.path().to_path_buf();
    let stderr = pipes.1.clone();
    // The thread holds no reference to the sandbox: dropping the sandbox drops the
    // pool's writers, and each waiting interpreter reads end-of-input and exits.
    let done = tokio::task::spawn_blocking(move || {
        let mut store = store;
        let report = Sandbox::start(&compiled, &mut store, Instant::now(), Some(pipes), &limits);
        drop(scratch);
        report
    });
    Ok(Warm {
        stderr,
        writer,
        deadline,
        scratch: path,
        done,
    })
}

/// Runs `req` on a pre-started interpreter when it can; `None` when it cannot.
pub(crate) async fn try_warm(
    sb: &Arc<Sandbox>,
    req: &RunRequest,
) -> Result<Option<RunReport>, SandboxError> {
    let pool = &sb.warm;
    if pool.target == 0
        || !req.mounts.is_empty()
        || req.limits != pool.limits
        || req.limits.fuel.is_some()
    {
        return Ok(None);
    }
    let Program::Python(source) = &req.program else {
        return Ok(None);
    };
    let frame = python_frame(source, &req.stdin, &req.limits)?;
    if req.stdin.len() > req.limits.max_input_bytes {
        return Ok(None);
    }
    let taken = {
        let mut ready = pool.ready.lock_or_recover();
        let at = ready
            .iter()
            .position(|w| !w.stderr.contents().is_empty())
            .unwrap_or(0);
        ready.remove(at)
    };
    fill(sb);
    let Some(mut warm) = taken else {
        return Ok(None);
    };
    super::write_files(&warm.scratch, &req.files, &req.limits)?;
    let started = Instant::now();
    sb.arm_shared(&warm.deadline, &req.limits);
    let sent = async {
        warm.writer.write_all(&frame).await?;
        warm.writer.shutdown().await
    }
    .await;
    if let Err(e) = sent {
        return Err(SandboxError::Engine(format!(
            "the pre-started interpreter did not take its script: {e}"
        )));
    }
    let mut report = warm
        .done
        .await
        .map_err(|e| SandboxError::Engine(format!("the call's thread failed: {e}")))??;
    report.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.warm = true;
    if report.stderr.starts_with('\0') {
        report.stderr.remove(0);
    }
    Ok(Some(report))
}
