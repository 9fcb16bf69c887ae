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

mod cache;
mod disk;
mod host;
mod interpreters;
mod limits;
mod tool;
mod warm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, Trap, UpdateDeadline, Val, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

pub use host::{
    BAD_MEMORY, DENIED, FAILED, HTTP_GET, HostAccess, HostCallError, HostGate, READ_SECRET,
    TOO_LARGE, http_get_tool,
};
pub use interpreters::{Interpreter, Interpreters, PYTHON_SHA256, QUICKJS_SHA256};
pub use limits::{LimitKind, Limits};
pub use tool::{PoolConfig, SandboxPool, SandboxTool, ScriptLanguage, ToolCode};

use limits::Limiter;

/// How often the epoch advances: the granularity of wall-clock deadlines.
const TICK: Duration = Duration::from_millis(2);

/// Where the guest finds its scratch directory.
pub const SCRATCH: &str = "/scratch";

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Where compiled modules are cached. It must be private to this user (else
    /// [`SandboxError::UnsafeCache`]); a missing directory is created with mode
    /// `700`. `None` disables the on-disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Where the interpreters are (see [`Interpreters::locate`]).
    pub interpreters: Option<PathBuf>,
    /// Where per-call scratch directories are made (the system's temp dir by default).
    pub scratch_root: Option<PathBuf>,
    /// How many instances may exist at once (pool slots).
    pub max_instances: u32,
    /// The largest linear memory any call may be given.
    pub max_memory_bytes: u64,
    /// Pre-started Python interpreters kept ready (0 disables warm starts).
    pub warm_python: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: default_cache_dir(),
            interpreters: None,
            scratch_root: None,
            max_instances: 128,
            max_memory_bytes: 1 << 30,
            warm_python: 0,
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("BULWARK_WASM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulwark/wasm")))
}

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

/// The store's data.
pub(crate) struct State {
    wasi: Option<WasiP1Ctx>,
    host: Option<HostAccess>,
    limiter: Limiter,
    disk: disk::Disk,
    /// The epoch count at which the call is interrupted (`u64::MAX`: not armed yet).
    deadline: Arc<AtomicU64>,
    now: Arc<AtomicU64>,
    /// Fuel when the call's clock started (a warm instance has already spent some on
    /// start-up).
    fuel_at_start: Option<u64>,
}

/// A module's sha256 and the linker variant it was linked with.
type ModuleKey = ([u8; 32], usize);

struct Compiled {
    pre: InstancePre<State>,
    wasi: bool,
}

/// The sandbox: an engine, its caches and its interpreters. Cheap to share
/// (`Arc`); calls may run concurrently up to the pool's size.
pub struct Sandbox {
    engine: Engine,
    /// One linker per set of host functions (see [`HostAccess`]).
    linkers: Vec<Linker<State>>,
    modules: Mutex<HashMap<ModuleKey, Arc<Compiled>>>,
    interpreters: Mutex<Option<Interpreters>>,
    config: SandboxConfig,
    /// Ticks since the sandbox started; the ticker thread advances it with the epoch.
    now: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    warm: warm::WarmPool,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Sets up the engine: pooling allocator, epoch interruption and fuel, and the
    /// on-disk cache of compiled modules.
    pub fn new(config: SandboxConfig) -> Result<Arc<Sandbox>, SandboxError> {
        let engine_err = |e: wasmtime::Error| SandboxError::Engine(e.to_string());
        let mut pool = PoolingAllocationConfig::new();
        // Each call may add a small instance without memory of its own (the disk
        // quota's trampoline, see `disk`).
        pool.total_core_instances(config.max_instances.saturating_mul(2))
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_bytes as usize)
            .max_unused_warm_slots(16);
        let mut cfg = Config::new();
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(1 << 20);
        if let Some(dir) = &config.cache_dir {
            let dir = cache::private_dir(dir)?;
            let mut cc = CacheConfig::new();
            cc.with_directory(dir);
            cfg.cache(Some(Cache::new(cc).map_err(engine_err)?));
        }
        let engine = Engine::new(&cfg).map_err(engine_err)?;
        // The WASI functions as wasmtime-wasi implements them; the linkers the guests
        // see wrap those that can grow the scratch directory (see `disk`).
        let mut wasi: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut wasi, wasi_of).map_err(engine_err)?;
        let wasi = Arc::new(wasi);
        let trampoline = disk::trampoline(&engine).map_err(engine_err)?;
        let mut linkers = Vec::with_capacity(4);
        for variant in 0..4 {
            let mut linker: Linker<State> = Linker::new(&engine);
            wasmtime_wasi::p1::add_to_linker_sync(&mut linker, wasi_of).map_err(engine_err)?;
            disk::define(&mut linker, &wasi, &trampoline).map_err(engine_err)?;
            host::define(&mut linker, variant).map_err(engine_err)?;
            linkers.push(linker);
        }
        let now = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, now, stop) = (engine.clone(), now.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bulwark-sandbox-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        now.fetch_add(1, Ordering::Relaxed);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| SandboxError::Engine(format!("epoch thread: {e}")))?;
        }
        let sandbox = Arc::new(Sandbox {
            engine,
            linkers,
            modules: Mutex::new(HashMap::new()),
            interpreters: Mutex::new(None),
            warm: warm::WarmPool::new(config.warm_python),
            config,
            now,
            stop,
        });
        Ok(sandbox)
    }

    /// Starts the pre-started Python interpreters (`warm_python` of them) in the
    /// background. Must be called on a tokio runtime. Calls start them too.
    pub fn warm_up(self: &Arc<Self>) {
        warm::fill(self);
    }

    /// How many pre-started Python interpreters are ready: started up and waiting
    /// for their script.
    pub fn warm_ready(&self) -> usize {
        self.warm.waiting()
    }

    /// The engine (for benchmarks that compare against raw wasmtime).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or finds in the caches) a module and pre-links it.
    fn compiled(&self, bytes: &[u8]) -> Result<Arc<Compiled>, SandboxError> {
        self.compiled_for(bytes, 0)
    }

    fn compiled_for(&self, bytes: &[u8], variant: usize) -> Result<Arc<Compiled>, SandboxError> {
        self.compiled_keyed(Sha256::digest(bytes).into(), bytes, variant)
    }

    fn compiled_keyed(
        &self,
        hash: [u8; 32],
        bytes: &[u8],
        variant: usize,
    ) -> Result<Arc<Compiled>, SandboxError> {
        let key = (hash, variant);
        if let Some(c) = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| SandboxError::Module(format!("{e:#}")))?;
        let wasi = module
            .imports()
            .any(|i| i.module() == "wasi_snapshot_preview1");
        let pre = self.linkers[variant]
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::Module(format!("{e:#}")))?;
        let c = Arc::new(Compiled { pre, wasi });
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, c.clone());
        Ok(c)
    }

    /// The interpreters, located and verified on first use.
    pub fn interpreters(&self) -> Result<Interpreters, SandboxError> {
        let mut slot = self.interpreters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = &*slot {
            return Ok(i.clone());
        }
        let found = Interpreters::locate(self.config.interpreters.as_deref())
            .map_err(|e| SandboxError::Interpreter(e.to_string()))?;
        *slot = Some(found.clone());
        Ok(found)
    }

    fn interpreter(&self, which: Interpreter) -> Result<Arc<Compiled>, SandboxError> {
        // Keyed by the pinned hash the bytes were verified against: hashing 26 MB of
        // CPython again on every call would cost more than the call.
        let interpreters = self.interpreters()?;
        let bytes = interpreters.bytes(which)?;
        self.compiled_keyed(which.pinned_hash(), &bytes, 0)
    }

    /// Compiles and pre-links a module or interpreter ahead of the first call (a
    /// cold CPython compile takes seconds; the on-disk cache makes later processes
    /// fast).
    pub fn prepare(&self, program: &Program) -> Result<(), SandboxError> {
        match program {
            Program::Wasm { module, .. } => self.compiled(module).map(|_| ()),
            Program::Python(_) => self.interpreter(Interpreter::Python).map(|_| ()),
            Program::JavaScript(_) => self.interpreter(Interpreter::QuickJs).map(|_| ()),
        }
    }

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

    /// A store for one call; `wasi` comes with the call's scratch directory.
    fn store(
        &self,
        wasi: Option<(WasiP1Ctx, &Path)>,
        limits: &Limits,
    ) -> Result<Store<State>, SandboxError> {
        let deadline = Arc::new(AtomicU64::new(u64::MAX));
        let (wasi, disk) = match wasi {
            Some((ctx, scratch)) => (Some(ctx), disk::Disk::new(scratch, limits)),
            None => (None, disk::Disk::none()),
        };
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                host: None,
                limiter: Limiter::new(limits),
                disk,
                deadline,
                now: self.now.clone(),
                fuel_at_start: None,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let armed = ctx.data().deadline.load(Ordering::Relaxed) != u64::MAX;
            if armed && ctx.data().fuel_at_start.is_none() {
                let fuel = ctx.get_fuel().unwrap_or(0);
                ctx.data_mut().fuel_at_start = Some(fuel);
            }
            let s = ctx.data();
            if s.now.load(Ordering::Relaxed) >= s.deadline.load(Ordering::Relaxed) {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        Ok(store)
    }

    fn arm(&self, state: &mut State, limits: &Limits) {
        state.fuel_at_start = Some(limits.fuel.unwrap_or(u64::MAX));
        self.arm_shared(&state.deadline, limits);
    }

    /// Starts the call's clock: it is interrupted `limits.timeout` from now.
    pub(crate) fn arm_shared(&self, deadline: &AtomicU64, limits: &Limits) {
        let ticks = limits.timeout.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64;
        deadline.store(self.now.load(Ordering::Relaxed) + ticks, Ordering::Relaxed);
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

    /// The WASI context of a call: its arguments, standard streams, a fresh scratch
    /// directory at [`SCRATCH`] and the read-only mounts; no environment, no network.
    #[allow(clippy::type_complexity)]
    fn wasi_ctx(
        &self,
        argv: &[String],
        stdin: impl wasmtime_wasi::cli::StdinStream + 'static,
        req: &RunRequest,
        limits: &Limits,
    ) -> Result<
        (
            WasiP1Ctx,
            tempfile::TempDir,
            (MemoryOutputPipe, MemoryOutputPipe),
        ),
        SandboxError,
    > {
        let files_err = |e: &dyn std::fmt::Display| SandboxError::Files(e.to_string());
        let scratch = match &self.config.scratch_root {
            Some(root) => tempfile::Builder::new()
                .prefix("bulwark-scratch-")
                .tempdir_in(root),
            None => tempfile::Builder::new()
                .prefix("bulwark-scratch-")
                .tempdir(),
        }
        .map_err(|e| files_err(&e))?;
        write_files(scratch.path(), &req.files, limits)?;
        // One more byte than the cap: a full pipe means the guest tried to write more.
        let out = MemoryOutputPipe::new(limits.output_bytes + 1);
        let err = MemoryOutputPipe::new(limits.output_bytes + 1);
        let mut b = WasiCtxBuilder::new();
        b.args(argv)
            .stdin(stdin)
            .stdout(out.clone())
            .stderr(err.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .allow_blocking_current_thread(true);
        b.preopened_dir(scratch.path(), SCRATCH, FsPerms::ReadWrite)
            .map_err(|e| files_err(&e))?;
        for m in &req.mounts {
            validate_guest_path(&m.guest)?;
            if !m.host.is_dir() {
                return Err(SandboxError::Files(format!(
                    "mount source {} is not a directory",
                    m.host.display()
                )));
            }
            b.preopened_dir(&m.host, &m.guest, FsPerms::ReadOnly)
                .map_err(|e| files_err(&e))?;
        }
        Ok((b.build_p1(), scratch, (out, err)))
    }

    /// Instantiation failed: a memory limit below the module's minimum is the memory
    /// limit; anything else (every pool slot taken, a start function that trapped
    /// aside) is the sandbox's refusal, not the guest's failure.
    fn not_instantiated(
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

    fn report(
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

    fn finish(
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

/// Places a call's files in its scratch directory; names must be plain file names,
/// and together they must fit the call's disk limits.
pub(crate) fn write_files(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    limits: &Limits,
) -> Result<(), SandboxError> {
    let bytes = files
        .iter()
        .fold(0u64, |n, (_, c)| n.saturating_add(c.len() as u64));
    if bytes > limits.disk_bytes || files.len() as u64 > limits.disk_files {
        return Err(SandboxError::Refused(format!(
            "disk: the call's {} files hold {bytes} bytes, over the scratch directory's limit of {} bytes and {} files",
            files.len(),
            limits.disk_bytes,
            limits.disk_files
        )));
    }
    for (name, contents) in files {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(SandboxError::Refused(format!(
                "scratch file name `{name}` must be a plain file name"
            )));
        }
        std::fs::write(dir.join(name), contents).map_err(|e| SandboxError::Files(e.to_string()))?;
    }
    Ok(())
}

/// The WASI context in a store's data (an empty one for a store without WASI).
fn wasi_of(s: &mut State) -> &mut WasiP1Ctx {
    s.wasi
        .get_or_insert_with(|| WasiCtxBuilder::new().build_p1())
}

fn validate_guest_path(guest: &str) -> Result<(), SandboxError> {
    let ok = guest.starts_with('/')
        && guest.len() > 1
        && guest != SCRATCH
        && !guest.split('/').any(|c| c == ".." || c == ".");
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Refused(format!(
            "guest mount path `{guest}` must be absolute, other than {SCRATCH}, without `.` or `..`"
        )))
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
