//! The sandbox: untrusted code — tool modules, model-written Python and JavaScript —
//! runs in wasmtime, never on the host.
//!
//! This module owns the engine (pooling allocator, epoch interruption, fuel), the
//! compiled-module cache (on disk, keyed by content hash and engine fingerprint, by
//! wasmtime's own cache; in memory as pre-linked [`wasmtime::InstancePre`]s keyed by
//! the module's sha256), the per-call limits, the WASI surface (no network, no
//! environment, a fresh scratch directory per call under a disk quota, read-only
//! mounts only where granted) and the interpreters (CPython and QuickJS compiled to
//! WASI).
//!
//! Compiled modules loaded from the on-disk cache run as native code, so the cache
//! must be private: a cache directory (or a file in it, or a directory above it) that
//! another user could write is refused with [`SandboxError::UnsafeCache`].
//!
//! A call never panics on bad input: modules that do not compile, exports that do not
//! exist, arguments that are too large, mounts that do not exist all come back as
//! [`SandboxError`]; what the guest does (exit codes, traps, limits hit) comes back as
//! a [`RunReport`].
//!
//! The engine, its caches and the WASI surface of a call are in `engine`; what a
//! call did, and how its report is built, in `report`. This file holds the public
//! types of a call and runs calls: it dispatches a program to a module's function,
//! a WASI command or an interpreter.

mod cache;
mod disk;
mod engine;
mod host;
mod interpreters;
mod limits;
mod report;
mod tool;
mod warm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Store, Val, ValType};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

pub use engine::{SCRATCH, Sandbox, SandboxConfig};
pub use host::{
    BAD_MEMORY, DENIED, FAILED, HTTP_GET, HostAccess, HostCallError, HostGate, READ_SECRET,
    TOO_LARGE, http_get_tool,
};
pub use interpreters::{Interpreter, Interpreters, PYTHON_SHA256, QUICKJS_SHA256};
pub use limits::{LimitKind, Limits};
pub use report::{RunReport, RunStatus};
pub use tool::{PoolConfig, SandboxPool, SandboxTool, ScriptLanguage, ToolCode};

use engine::{Compiled, State, TICK, write_files};

/// Why the sandbox could not run a call (the guest's own failures are in the
/// [`RunReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The engine could not be set up.
    #[error("the sandbox engine could not be set up: {0}")]
    Engine(String),
    /// The module is not valid WebAssembly (or WAT), or links against imports the
    /// sandbox does not provide.
    #[error("the module does not load: {0}")]
    Module(String),
    /// An interpreter is missing or does not verify.
    #[error("{0}")]
    Interpreter(String),
    /// The export to invoke does not exist or is not a function.
    #[error("the module has no exported function `{0}`")]
    NoSuchExport(String),
    /// Arguments to an invoked function do not match its parameters.
    #[error("bad arguments for `{func}`: {reason}")]
    Arguments {
        /// The function.
        func: String,
        /// What is wrong.
        reason: String,
    },
    /// The request exceeds a size cap or asks for more than the sandbox allows.
    #[error("refused: {0}")]
    Refused(String),
    /// A mount or the scratch directory could not be set up.
    #[error("the sandbox's files could not be set up: {0}")]
    Files(String),
    /// The compiled-module cache could be written by someone other than this user:
    /// its modules would run as native code, so it is not used.
    #[error(
        "the module cache is not private: {path} {problem}; compiled code loaded from it would run as native code. Fix: {fix}"
    )]
    UnsafeCache {
        /// The directory or file at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        fix: String,
    },
}

/// What to run.
#[derive(Clone, Debug)]
pub enum Program {
    /// A WebAssembly module (binary or WAT text). Without `invoke`, a WASI command
    /// (`_start`); with it, that exported function, called with `args` as numbers.
    Wasm {
        /// The module's bytes.
        module: Arc<Vec<u8>>,
        /// The function to call instead of `_start`.
        invoke: Option<String>,
    },
    /// A Python script, run by CPython compiled to WASI.
    Python(String),
    /// A JavaScript program, run by QuickJS compiled to WASI.
    JavaScript(String),
}

/// A host directory made visible read-only to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it (an absolute path such as `/data`).
    pub guest: String,
}

impl Mount {
    /// Parses `HOST_DIR:GUEST_DIR:ro` (`:ro` may be omitted; nothing else is allowed).
    pub fn parse(spec: &str) -> Result<Mount, SandboxError> {
        let bad = |why: &str| SandboxError::Refused(format!("mount `{spec}`: {why}"));
        let mut parts: Vec<&str> = spec.split(':').collect();
        if parts.last() == Some(&"ro") {
            parts.pop();
        } else if parts.len() == 3 {
            return Err(bad("mounts are read-only; the mode must be `ro`"));
        }
        let [host, guest] = parts[..] else {
            return Err(bad("expected HOST_DIR:GUEST_DIR:ro"));
        };
        Ok(Mount {
            host: PathBuf::from(host),
            guest: guest.to_string(),
        })
    }
}

/// One call.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// What to run.
    pub program: Program,
    /// Numbers for an invoked function; ignored otherwise.
    pub args: Vec<String>,
    /// The guest's standard input.
    pub stdin: Vec<u8>,
    /// Read-only mounts.
    pub mounts: Vec<Mount>,
    /// Files placed in the scratch directory before the call (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// The limits.
    pub limits: Limits,
    /// Host functions for a module, when the caller's token grants them.
    pub host: Option<HostAccess>,
}

impl RunRequest {
    /// A request with default limits and nothing else.
    pub fn new(program: Program) -> Self {
        RunRequest {
            program,
            args: Vec::new(),
            stdin: Vec::new(),
            mounts: Vec::new(),
            files: Vec::new(),
            limits: Limits::default(),
            host: None,
        }
    }
}

impl Sandbox {
    /// Runs a call on a blocking thread (WASI's file system calls block).
    pub async fn run(self: &Arc<Self>, req: RunRequest) -> Result<RunReport, SandboxError> {
        if let Program::Python(_) = &req.program
            && let Some(report) = warm::try_warm(self, &req).await?
        {
            return Ok(report);
        }
        // On a multi-threaded runtime the call runs in place: the worker hands its other
        // tasks to another thread for the duration, without a thread hop for the call
        // itself. Elsewhere it runs on the blocking pool.
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return tokio::task::block_in_place(|| self.run_blocking(&req));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.run_blocking(&req))
            .await
            .map_err(|e| SandboxError::Engine(format!("the call's thread failed: {e}")))?
    }

    /// Runs a call on the current thread. Must not be called on an async runtime's
    /// worker thread (use [`Sandbox::run`] there).
    pub fn run_blocking(&self, req: &RunRequest) -> Result<RunReport, SandboxError> {
        let limits = req.limits.checked(self.config.max_memory_bytes)?;
        if req.stdin.len() > limits.max_input_bytes {
            return Err(SandboxError::Refused(format!(
                "standard input is {} bytes, over the {}-byte cap",
                req.stdin.len(),
                limits.max_input_bytes
            )));
        }
        match &req.program {
            Program::Wasm {
                module,
                invoke: Some(func),
            } => {
                let compiled = self.compiled_for(module, HostAccess::variant(req.host.as_ref()))?;
                self.invoke(&compiled, func, &req.args, &limits, req)
            }
            Program::Wasm {
                module,
                invoke: None,
            } => {
                let compiled = self.compiled_for(module, HostAccess::variant(req.host.as_ref()))?;
                self.command(
                    &compiled,
                    vec!["module".into()],
                    req.stdin.clone(),
                    req,
                    &limits,
                )
            }
            Program::Python(source) => {
                let compiled = self.interpreter(Interpreter::Python)?;
                let frame = python_frame(source, &req.stdin, &limits)?;
                let mut report = self.command(&compiled, python_argv(), frame, req, &limits)?;
                // The loader's readiness marker.
                if report.stderr.starts_with('\0') {
                    report.stderr.remove(0);
                }
                Ok(report)
            }
            Program::JavaScript(source) => {
                if source.len() > limits.max_input_bytes {
                    return Err(SandboxError::Refused(format!(
                        "the script is {} bytes, over the {}-byte cap",
                        source.len(),
                        limits.max_input_bytes
                    )));
                }
                let compiled = self.interpreter(Interpreter::QuickJs)?;
                let mut req = req.clone();
                req.files
                    .push(("main.js".into(), source.as_bytes().to_vec()));
                let argv = vec!["qjs".into(), "--std".into(), format!("{SCRATCH}/main.js")];
                self.command(&compiled, argv, req.stdin.clone(), &req, &limits)
            }
        }
    }

    fn invoke(
        &self,
        compiled: &Compiled,
        func: &str,
        args: &[String],
        limits: &Limits,
        req: &RunRequest,
    ) -> Result<RunReport, SandboxError> {
        let started = Instant::now();
        let mut scratch = None;
        let mut pipes = None;
        let mut ctx = None;
        if compiled.wasi {
            let (c, dir, out) =
                self.wasi_ctx(&[], MemoryInputPipe::new(req.stdin.clone()), req, limits)?;
            scratch = Some(dir);
            pipes = Some(out);
            ctx = Some(c);
        }
        let wasi = ctx.zip(scratch.as_ref().map(|d| d.path()));
        let mut store = self.store(wasi, limits)?;
        store.data_mut().host = req.host.clone();
        self.arm(store.data_mut(), limits);
        let instance = match compiled.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Self::not_instantiated(e, &mut store, started, pipes, limits),
        };
        let f = instance
            .get_func(&mut store, func)
            .ok_or_else(|| SandboxError::NoSuchExport(func.to_string()))?;
        let ty = f.ty(&store);
        let params = parse_params(func, ty.params(), args)?;
        let mut results = vec![Val::I32(0); ty.results().len()];
        let outcome = f.call(&mut store, &params, &mut results);
        let report = match outcome {
            Ok(()) => {
                let values = results.iter().map(val_json).collect();
                let mut report = Self::finish(None, &mut store, started, pipes, limits, values);
                // A function that returned finished: it has no exit code, but it is ok
                // unless it said more than its cap.
                if report.limit.is_none() {
                    report.status = RunStatus::Ok;
                }
                report
            }
            Err(e) => Self::report(e, &mut store, started, pipes, limits, Vec::new()),
        };
        drop(scratch);
        Ok(report)
    }

    /// Runs a WASI command with `argv` and `stdin`.
    fn command(
        &self,
        compiled: &Compiled,
        argv: Vec<String>,
        stdin: Vec<u8>,
        req: &RunRequest,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError> {
        let started = Instant::now();
        let (ctx, scratch, pipes) =
            self.wasi_ctx(&argv, MemoryInputPipe::new(stdin), req, limits)?;
        let mut store = self.store(Some((ctx, scratch.path())), limits)?;
        if matches!(req.program, Program::Wasm { .. }) {
            store.data_mut().host = req.host.clone();
        }
        self.arm(store.data_mut(), limits);
        let report = Self::start(compiled, &mut store, started, Some(pipes), limits);
        drop(scratch);
        report
    }

    fn start(
        compiled: &Compiled,
        store: &mut Store<State>,
        started: Instant,
        pipes: Option<(MemoryOutputPipe, MemoryOutputPipe)>,
        limits: &Limits,
    ) -> Result<RunReport, SandboxError> {
        let instance = match compiled.pre.instantiate(&mut *store) {
            Ok(i) => i,
            Err(e) => return Self::not_instantiated(e, store, started, pipes, limits),
        };
        let start = instance
            .get_typed_func::<(), ()>(&mut *store, "_start")
            .map_err(|_| SandboxError::NoSuchExport("_start".into()))?;
        Ok(match start.call(&mut *store, ()) {
            Ok(()) => Self::finish(Some(0), store, started, pipes, limits, Vec::new()),
            Err(e) => Self::report(e, store, started, pipes, limits, Vec::new()),
        })
    }
}

/// CPython's arguments: isolated mode, a small loader that reads one framed
/// script (and its standard input) from stdin, then runs it as `__main__` in
/// the scratch directory. Cold and warm starts run the same loader.
fn python_argv() -> Vec<String> {
    vec![
        "python".into(),
        "-I".into(),
        "-S".into(),
        "-c".into(),
        warm::PYTHON_LOADER.into(),
    ]
}

/// The frame the loader reads: two little-endian u64 lengths, the script, stdin.
pub(crate) fn python_frame(
    source: &str,
    stdin: &[u8],
    limits: &Limits,
) -> Result<Vec<u8>, SandboxError> {
    if source.len() > limits.max_input_bytes {
        return Err(SandboxError::Refused(format!(
            "the script is {} bytes, over the {}-byte cap",
            source.len(),
            limits.max_input_bytes
        )));
    }
    let mut frame = Vec::with_capacity(16 + source.len() + stdin.len());
    frame.extend_from_slice(&(source.len() as u64).to_le_bytes());
    frame.extend_from_slice(&(stdin.len() as u64).to_le_bytes());
    frame.extend_from_slice(source.as_bytes());
    frame.extend_from_slice(stdin);
    Ok(frame)
}

fn parse_params(
    func: &str,
    types: impl ExactSizeIterator<Item = ValType>,
    args: &[String],
) -> Result<Vec<Val>, SandboxError> {
    let bad = |reason: String| SandboxError::Arguments {
        func: func.to_string(),
        reason,
    };
    if types.len() != args.len() {
        return Err(bad(format!(
            "it takes {} arguments, {} given",
            types.len(),
            args.len()
        )));
    }
    types
        .zip(args)
        .map(|(t, a)| {
            let parsed = match t {
                ValType::I32 => a.parse::<i32>().map(Val::I32).map_err(|e| e.to_string()),
                ValType::I64 => a.parse::<i64>().map(Val::I64).map_err(|e| e.to_string()),
                ValType::F32 => a
                    .parse::<f32>()
                    .map(|f| Val::F32(f.to_bits()))
                    .map_err(|e| e.to_string()),
                ValType::F64 => a
                    .parse::<f64>()
                    .map(|f| Val::F64(f.to_bits()))
                    .map_err(|e| e.to_string()),
                other => Err(format!("parameters of type {other} are not supported")),
            };
            parsed.map_err(|e| bad(format!("`{a}`: {e}")))
        })
        .collect()
}

fn val_json(v: &Val) -> serde_json::Value {
    match v {
        Val::I32(i) => (*i).into(),
        Val::I64(i) => (*i).into(),
        Val::F32(b) => f64::from(f32::from_bits(*b)).into(),
        Val::F64(b) => f64::from_bits(*b).into(),
        other => format!("{other:?}").into(),
    }
}
