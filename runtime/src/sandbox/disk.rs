//! The scratch directory's disk limit ([`Limits::disk_bytes`], [`Limits::disk_files`]).
//!
//! wasmtime-wasi writes a preopened directory straight to the host's file system, so
//! this module wraps every WASI call that can make the scratch tree bigger:
//! `fd_write`, `fd_pwrite`, `fd_allocate`, `fd_filestat_set_size`, `path_open` with
//! `O_CREAT`, `path_create_directory`, `path_symlink` and `path_link`. Before such a
//! call runs, its largest possible growth is added to what the directory holds: how
//! far a write would extend its file (all of it in append mode; past the end, the
//! gap counts too, so a sparse file counts at its full length), how far a
//! `set_size` or `allocate` would, one entry for a new file, directory or link. A call that would go over the limit does not run: the
//! guest is stopped and the call ends with limit `disk`.
//!
//! What the directory holds (the lengths of its regular files and the number of its
//! entries, at any depth) is measured by walking it when the first growing call of a
//! run comes, and again whenever the running estimate would exceed the limit. The
//! estimate only ever over-counts (shrinking is not tracked), so the walk is needed
//! only near the limit, and a guest that deletes what it wrote gets its room back.
//!
//! The checked functions call wasmtime-wasi's own through a small trampoline module,
//! instantiated once per call with the guest's memory: WASI functions find the
//! memory they read and write through their caller's `memory` export, which a
//! direct call from the host would not have.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::{Caller, Engine, Extern, Func, Instance, Linker, Module, WasmParams};

use super::{Limits, State};

const WASI: &str = "wasi_snapshot_preview1";
/// WASI errno `fault`.
const EFAULT: i32 = 21;
/// WASI errno `inval`.
const EINVAL: i32 = 28;
/// A regular file, in a WASI filestat.
const REGULAR_FILE: u8 = 4;
/// `oflags` bit `creat`.
const O_CREAT: i32 = 1;
/// `fdflags` bit `append`.
const APPEND: u16 = 1;
/// The most buffers one write may name (POSIX's `IOV_MAX`).
const IOV_MAX: u32 = 1024;

/// The wrapped functions, and the two used to look at a file before writing to it.
#[derive(Clone, Copy)]
enum Op {
    FdWrite,
    FdPwrite,
    FdAllocate,
    FdFilestatSetSize,
    PathOpen,
    PathCreateDirectory,
    PathSymlink,
    PathLink,
    FdFilestatGet,
    FdTell,
    FdFdstatGet,
}

const OPS: usize = 11;
const NAMES: [&str; OPS] = [
    "fd_write",
    "fd_pwrite",
    "fd_allocate",
    "fd_filestat_set_size",
    "path_open",
    "path_create_directory",
    "path_symlink",
    "path_link",
    "fd_filestat_get",
    "fd_tell",
    "fd_fdstat_get",
];
/// Their parameter types (all return an errno, `i32`).
const PARAMS: [&str; OPS] = [
    "i32 i32 i32 i32",
    "i32 i32 i32 i64 i32",
    "i32 i64 i64",
    "i32 i64",
    "i32 i32 i32 i32 i32 i64 i64 i32 i32",
    "i32 i32 i32",
    "i32 i32 i32 i32 i32",
    "i32 i32 i32 i32 i32 i32 i32",
    "i32 i32",
    "i32 i32",
    "i32 i32",
];

/// The trampoline: it imports the guest's memory and the original WASI functions,
/// and exports the memory and a function calling each original.
pub(crate) fn trampoline(engine: &Engine) -> wasmtime::Result<Module> {
    let mut wat = String::from("(module\n  (import \"env\" \"memory\" (memory 0))\n");
    for (k, (name, params)) in NAMES.iter().zip(PARAMS).enumerate() {
        wat.push_str(&format!(
            "  (import \"{WASI}\" \"{name}\" (func $f{k} (param {params}) (result i32)))\n"
        ));
    }
    wat.push_str("  (export \"memory\" (memory 0))\n");
    for (k, (name, params)) in NAMES.iter().zip(PARAMS).enumerate() {
        let gets: String = (0..params.split(' ').count())
            .map(|i| format!(" local.get {i}"))
            .collect();
        wat.push_str(&format!(
            "  (func (export \"{name}\") (param {params}) (result i32){gets} call $f{k})\n"
        ));
    }
    wat.push(')');
    Module::new(engine, wat)
}

/// A store's disk accounting: its quota (none for a call without a scratch
/// directory) and the trampoline's functions, instantiated once per store.
pub(crate) struct Disk {
    quota: Option<Quota>,
    funcs: [Option<Func>; OPS],
}

struct Quota {
    root: PathBuf,
    max_bytes: u64,
    max_files: u64,
    /// Upper bounds on the bytes and entries the directory holds; `None` until the
    /// first measurement.
    estimate: Option<(u64, u64)>,
    hit: bool,
}

/// The guest tried to go over its disk limit; the call stops with limit `disk`.
#[derive(Debug, thiserror::Error)]
#[error(
    "disk: the scratch directory would hold {bytes} bytes in {files} entries, over its limit of {max_bytes} bytes and {max_files} entries"
)]
pub(crate) struct DiskLimitHit {
    bytes: u64,
    files: u64,
    max_bytes: u64,
    max_files: u64,
}

impl Disk {
    /// No scratch directory: nothing to account.
    pub fn none() -> Self {
        Disk {
            quota: None,
            funcs: [None; OPS],
        }
    }

    /// The quota of the scratch directory at `root`.
    pub fn new(root: &Path, limits: &Limits) -> Self {
        Disk {
            quota: Some(Quota {
                root: root.to_path_buf(),
                max_bytes: limits.disk_bytes,
                max_files: limits.disk_files,
                estimate: None,
                hit: false,
            }),
            funcs: [None; OPS],
        }
    }

    /// Whether the guest was stopped for going over the limit.
    pub fn hit(&self) -> bool {
        self.quota.as_ref().is_some_and(|q| q.hit)
    }
}

impl Quota {
    fn charge(&mut self, bytes: u64, files: u64) -> Result<(), DiskLimitHit> {
        if bytes == 0 && files == 0 {
            return Ok(());
        }
        let fits = |(b, f): (u64, u64)| {
            b.saturating_add(bytes) <= self.max_bytes && f.saturating_add(files) <= self.max_files
        };
        let now = match self.estimate {
            Some(e) if fits(e) => e,
            _ => measure(&self.root),
        };
        if !fits(now) {
            self.hit = true;
            self.estimate = Some(now);
            return Err(DiskLimitHit {
                bytes: now.0.saturating_add(bytes),
                files: now.1.saturating_add(files),
                max_bytes: self.max_bytes,
                max_files: self.max_files,
            });
        }
        self.estimate = Some((now.0.saturating_add(bytes), now.1.saturating_add(files)));
        Ok(())
    }
}

/// The lengths of the regular files under `root` and the number of entries (files,
/// directories, links), without following links.
pub(crate) fn measure(root: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            files = files.saturating_add(1);
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    (bytes, files)
}

/// Replaces the growing WASI functions in `linker` with checked ones that call the
/// originals, which `inner` holds.
pub(crate) fn define(
    linker: &mut Linker<State>,
    wasi: &Arc<Linker<State>>,
    trampoline: &Module,
) -> wasmtime::Result<()> {
    let inner = &Arc::new(Originals {
        wasi: wasi.clone(),
        trampoline: trampoline.clone(),
    });
    linker.allow_shadowing(true);
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "fd_write",
        move |mut c: Caller<'_, State>, fd: i32, iovs: i32, n: i32, nwritten: i32| {
            match write_growth(&mut c, &i, fd, iovs, n, None)? {
                Ok(growth) => charge(&mut c, growth, 0)?,
                Err(errno) => return Ok(errno),
            }
            call(&mut c, &i, Op::FdWrite, (fd, iovs, n, nwritten))
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "fd_pwrite",
        move |mut c: Caller<'_, State>, fd: i32, iovs: i32, n: i32, at: i64, nwritten: i32| {
            match write_growth(&mut c, &i, fd, iovs, n, Some(at as u64))? {
                Ok(growth) => charge(&mut c, growth, 0)?,
                Err(errno) => return Ok(errno),
            }
            call(&mut c, &i, Op::FdPwrite, (fd, iovs, n, at, nwritten))
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "fd_allocate",
        move |mut c: Caller<'_, State>, fd: i32, at: i64, len: i64| {
            match resize_growth(&mut c, &i, fd, (at as u64).saturating_add(len as u64))? {
                Ok(growth) => charge(&mut c, growth, 0)?,
                Err(errno) => return Ok(errno),
            }
            call(&mut c, &i, Op::FdAllocate, (fd, at, len))
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "fd_filestat_set_size",
        move |mut c: Caller<'_, State>, fd: i32, size: i64| {
            match resize_growth(&mut c, &i, fd, size as u64)? {
                Ok(growth) => charge(&mut c, growth, 0)?,
                Err(errno) => return Ok(errno),
            }
            call(&mut c, &i, Op::FdFilestatSetSize, (fd, size))
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "path_open",
        move |mut c: Caller<'_, State>,
              fd: i32,
              dirflags: i32,
              path: i32,
              path_len: i32,
              oflags: i32,
              base: i64,
              inheriting: i64,
              fdflags: i32,
              opened: i32| {
            if oflags & O_CREAT != 0 {
                charge(&mut c, 0, 1)?;
            }
            let args = (
                fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened,
            );
            call(&mut c, &i, Op::PathOpen, args)
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "path_create_directory",
        move |mut c: Caller<'_, State>, fd: i32, path: i32, len: i32| {
            charge(&mut c, 0, 1)?;
            call(&mut c, &i, Op::PathCreateDirectory, (fd, path, len))
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "path_symlink",
        move |mut c: Caller<'_, State>, old: i32, old_len: i32, fd: i32, new: i32, new_len: i32| {
            charge(&mut c, 0, 1)?;
            call(
                &mut c,
                &i,
                Op::PathSymlink,
                (old, old_len, fd, new, new_len),
            )
        },
    )?;
    let i = inner.clone();
    linker.func_wrap(
        WASI,
        "path_link",
        move |mut c: Caller<'_, State>,
              old_fd: i32,
              flags: i32,
              old: i32,
              old_len: i32,
              new_fd: i32,
              new: i32,
              new_len: i32| {
            charge(&mut c, 0, 1)?;
            let args = (old_fd, flags, old, old_len, new_fd, new, new_len);
            call(&mut c, &i, Op::PathLink, args)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Adds a call's growth to the quota; over the limit, the guest stops.
fn charge(c: &mut Caller<'_, State>, bytes: u64, files: u64) -> wasmtime::Result<()> {
    match c.data_mut().disk.quota.as_mut() {
        Some(q) => q.charge(bytes, files).map_err(wasmtime::Error::new),
        None => Ok(()),
    }
}

/// Calls the original WASI function.
fn call<P: WasmParams>(
    c: &mut Caller<'_, State>,
    inner: &Originals,
    op: Op,
    params: P,
) -> wasmtime::Result<i32> {
    let f = func(c, inner, op)?;
    f.typed::<P, i32>(&*c)?.call(&mut *c, params)
}

/// The original WASI functions and the trampoline that calls them.
struct Originals {
    wasi: Arc<Linker<State>>,
    trampoline: Module,
}

fn func(c: &mut Caller<'_, State>, inner: &Originals, op: Op) -> wasmtime::Result<Func> {
    if let Some(f) = c.data().disk.funcs[op as usize] {
        return Ok(f);
    }
    let memory = memory(c).ok_or_else(|| wasmtime::Error::msg("missing required memory export"))?;
    let mut imports = Vec::with_capacity(OPS + 1);
    imports.push(Extern::Memory(memory));
    for name in NAMES {
        imports.push(inner.wasi.get(&mut *c, WASI, name)?);
    }
    let instance = Instance::new(&mut *c, &inner.trampoline, &imports)?;
    for (k, name) in NAMES.iter().enumerate() {
        let f = instance.get_func(&mut *c, name);
        c.data_mut().disk.funcs[k] = f;
    }
    c.data().disk.funcs[op as usize].ok_or_else(|| {
        wasmtime::Error::msg(format!("the trampoline has no `{}`", NAMES[op as usize]))
    })
}

/// How much a write of the buffers at `iovs` to `fd` (at `at`, or at the file's
/// position) can grow the directory, or the errno that refuses it.
fn write_growth(
    c: &mut Caller<'_, State>,
    inner: &Originals,
    fd: i32,
    iovs: i32,
    n: i32,
    at: Option<u64>,
) -> wasmtime::Result<Result<u64, i32>> {
    if c.data().disk.quota.is_none() {
        return Ok(Ok(0));
    }
    let Some(memory) = memory(c) else {
        return Ok(Err(EFAULT));
    };
    let n = n as u32;
    if n > IOV_MAX {
        return Ok(Err(EINVAL));
    }
    let mut list = vec![0u8; n as usize * 8];
    if memory.read(&*c, iovs as u32 as usize, &mut list).is_err() {
        return Ok(Err(EFAULT));
    }
    let len = list.chunks_exact(8).fold(0u64, |sum, iov| {
        let l = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        sum.saturating_add(u64::from(l))
    });
    if len == 0 {
        return Ok(Ok(0));
    }
    let (kind, size) = match probe(c, inner, Op::FdFilestatGet, fd)? {
        Ok(stat) => (stat[16], le_u64(&stat[32..40])),
        Err(errno) => return Ok(Err(errno)),
    };
    if kind != REGULAR_FILE {
        return Ok(Ok(0));
    }
    // A file in append mode writes at its end, whatever the offset says.
    let append = match probe(c, inner, Op::FdFdstatGet, fd)? {
        Ok(fdstat) => u16::from_le_bytes([fdstat[2], fdstat[3]]) & APPEND != 0,
        Err(errno) => return Ok(Err(errno)),
    };
    if append {
        return Ok(Ok(len));
    }
    let offset = match at {
        Some(at) => at,
        None => match probe(c, inner, Op::FdTell, fd)? {
            Ok(pos) => le_u64(&pos[..8]),
            Err(errno) => return Ok(Err(errno)),
        },
    };
    // Past the end, the gap counts too: a sparse file counts at its full length.
    Ok(Ok(offset.saturating_add(len).saturating_sub(size)))
}

/// How much setting `fd`'s length to `new` can grow the directory.
fn resize_growth(
    c: &mut Caller<'_, State>,
    inner: &Originals,
    fd: i32,
    new: u64,
) -> wasmtime::Result<Result<u64, i32>> {
    if c.data().disk.quota.is_none() {
        return Ok(Ok(0));
    }
    match probe(c, inner, Op::FdFilestatGet, fd)? {
        // Only a regular file can be resized (wasmtime-wasi refuses the rest).
        Ok(stat) if stat[16] != REGULAR_FILE => Ok(Ok(0)),
        Ok(stat) => Ok(Ok(new.saturating_sub(le_u64(&stat[32..40])))),
        Err(errno) => Ok(Err(errno)),
    }
}

/// Calls `op(fd, 0)`, which writes its result at address 0 of the guest's memory,
/// and returns those 64 bytes (the guest's own bytes there are put back), or the
/// errno. The guest is single-threaded and waiting on this call, so nothing sees the
/// borrowed bytes.
fn probe(
    c: &mut Caller<'_, State>,
    inner: &Originals,
    op: Op,
    fd: i32,
) -> wasmtime::Result<Result<[u8; 64], i32>> {
    let Some(memory) = memory(c) else {
        return Ok(Err(EFAULT));
    };
    let mut saved = [0u8; 64];
    if memory.read(&*c, 0, &mut saved).is_err() {
        return Ok(Err(EFAULT));
    }
    let errno = call(c, inner, op, (fd, 0i32));
    let mut out = [0u8; 64];
    let read = memory.read(&*c, 0, &mut out);
    memory.write(&mut *c, 0, &saved)?;
    match errno? {
        0 => {
            read?;
            Ok(Ok(out))
        }
        errno => Ok(Err(errno)),
    }
}

fn memory(c: &mut Caller<'_, State>) -> Option<wasmtime::Memory> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}
