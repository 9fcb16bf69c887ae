//! The sandbox's engine: wasmtime set up with the pooling allocator, epoch
//! interruption (advanced by a ticker thread) and fuel; the compiled-module caches
//! (on disk by wasmtime, in memory as pre-linked instances); the interpreters, located
//! on first use; and the store and WASI context of each call, with its fresh scratch
//! directory and its read-only mounts.

use crate::sync::LockExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::limits::Limiter;
use super::{
    HostAccess, Interpreter, Interpreters, Limits, Program, RunRequest, SandboxError, cache, disk,
    host, warm,
};

/// How often the epoch advances: the granularity of wall-clock deadlines.
pub(super) const TICK: Duration = Duration::from_millis(2);

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

/// The store's data.
pub(crate) struct State {
    wasi: Option<WasiP1Ctx>,
    pub(super) host: Option<HostAccess>,
    pub(super) limiter: Limiter,
    pub(super) disk: disk::Disk,
    /// The epoch count at which the call is interrupted (`u64::MAX`: not armed yet).
    pub(super) deadline: Arc<AtomicU64>,
    pub(super) now: Arc<AtomicU64>,
    /// Fuel when the call's clock started (a warm instance has already spent some on
    /// start-up).
    pub(super) fuel_at_start: Option<u64>,
}

/// A module's sha256 and the linker variant it was linked with.
type ModuleKey = ([u8; 32], usize);

/// A module compiled and pre-linked, and whether it imports WASI.
pub(super) struct Compiled {
    pub(super) pre: InstancePre<State>,
    pub(super) wasi: bool,
}

/// The sandbox: an engine, its caches and its interpreters. Cheap to share
/// (`Arc`); calls may run concurrently up to the pool's size.
pub struct Sandbox {
    engine: Engine,
    /// One linker per set of host functions (see [`HostAccess`]).
    linkers: Vec<Linker<State>>,
    modules: Mutex<HashMap<ModuleKey, Arc<Compiled>>>,
    interpreters: Mutex<Option<Interpreters>>,
    pub(super) config: SandboxConfig,
    /// Ticks since the sandbox started; the ticker thread advances it with the epoch.
    now: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub(super) warm: warm::WarmPool,
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

    pub(super) fn compiled_for(
        &self,
        bytes: &[u8],
        variant: usize,
    ) -> Result<Arc<Compiled>, SandboxError> {
        self.compiled_keyed(Sha256::digest(bytes).into(), bytes, variant)
    }

    fn compiled_keyed(
        &self,
        hash: [u8; 32],
        bytes: &[u8],
        variant: usize,
    ) -> Result<Arc<Compiled>, SandboxError> {
        let key = (hash, variant);
        if let Some(c) = self.modules.lock_or_recover().get(&key) {
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
        self.modules.lock_or_recover().insert(key, c.clone());
        Ok(c)
    }

    /// The interpreters, located and verified on first use.
    pub fn interpreters(&self) -> Result<Interpreters, SandboxError> {
        let mut slot = self.interpreters.lock_or_recover();
        if let Some(i) = &*slot {
            return Ok(i.clone());
        }
        let found = Interpreters::locate(self.config.interpreters.as_deref())
            .map_err(|e| SandboxError::Interpreter(e.to_string()))?;
        *slot = Some(found.clone());
        Ok(found)
    }

    pub(super) fn interpreter(&self, which: Interpreter) -> Result<Arc<Compiled>, SandboxError> {
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

    /// A store for one call; `wasi` comes with the call's scratch directory.
    pub(super) fn store(
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

    pub(super) fn arm(&self, state: &mut State, limits: &Limits) {
        state.fuel_at_start = Some(limits.fuel.unwrap_or(u64::MAX));
        self.arm_shared(&state.deadline, limits);
    }

    /// Starts the call's clock: it is interrupted `limits.timeout` from now.
    pub(crate) fn arm_shared(&self, deadline: &AtomicU64, limits: &Limits) {
        let ticks = limits.timeout.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64;
        deadline.store(self.now.load(Ordering::Relaxed) + ticks, Ordering::Relaxed);
    }

    /// The WASI context of a call: its arguments, standard streams, a fresh scratch
    /// directory at [`SCRATCH`] and the read-only mounts; no environment, no network.
    #[allow(clippy::type_complexity)]
    pub(super) fn wasi_ctx(
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
