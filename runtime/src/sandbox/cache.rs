//! The compiled-module cache's directory. wasmtime loads what it finds there as
//! native code, so whoever can write it can run code as this process: the directory
//! is used only when it is private.
//!
//! On Unix, the rules are: the directory is owned by this process's user and not
//! writable by group or others; each directory above it is owned by this user or
//! root and not writable by group or others unless it has the sticky bit (as `/tmp`
//! does); each entry inside it is owned by this user and is not a symbolic link and,
//! unless the directory itself is closed to group and others (mode `700`), not
//! writable by group or others. A directory the sandbox creates is created `700`.
//! Anything else is [`SandboxError::UnsafeCache`], naming the path and the fix.

use std::path::{Path, PathBuf};

use super::SandboxError;

/// Makes (when missing) and checks the cache directory; returns its absolute path.
pub(crate) fn private_dir(dir: &Path) -> Result<PathBuf, SandboxError> {
    let io = |e: std::io::Error| SandboxError::Engine(format!("cache directory: {e}"));
    let dir = std::path::absolute(dir).map_err(io)?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .map_err(|e| SandboxError::Engine(format!("cache directory {}: {e}", dir.display())))?;
    #[cfg(unix)]
    unix::check(&dir)?;
    Ok(dir)
}

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::SandboxError;

    const GROUP_OR_OTHER_WRITE: u32 = 0o022;
    const STICKY: u32 = 0o1000;

    fn unsafe_cache(path: &Path, problem: String, fix: String) -> SandboxError {
        SandboxError::UnsafeCache {
            path: path.to_path_buf(),
            problem,
            fix,
        }
    }

    fn stat(path: &Path, follow: bool) -> Result<std::fs::Metadata, SandboxError> {
        let meta = if follow {
            std::fs::metadata(path)
        } else {
            std::fs::symlink_metadata(path)
        };
        meta.map_err(|e| SandboxError::Engine(format!("cache directory {}: {e}", path.display())))
    }

    /// This process's user: the owner of a file it creates.
    fn current_uid() -> Result<u32, SandboxError> {
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            return Ok(meta.uid());
        }
        let file = tempfile::tempfile()
            .map_err(|e| SandboxError::Engine(format!("finding this process's user: {e}")))?;
        file.metadata()
            .map(|m| m.uid())
            .map_err(|e| SandboxError::Engine(format!("finding this process's user: {e}")))
    }

    pub(super) fn check(dir: &Path) -> Result<(), SandboxError> {
        let me = current_uid()?;
        let real = std::fs::canonicalize(dir)
            .map_err(|e| SandboxError::Engine(format!("cache directory {}: {e}", dir.display())))?;
        let meta = stat(&real, true)?;
        if meta.uid() != me {
            return Err(unsafe_cache(
                &real,
                format!(
                    "is owned by uid {}, not by this user (uid {me})",
                    meta.uid()
                ),
                format!(
                    "use a cache directory of your own (BULWARK_WASM_CACHE), or `chown {me} {}`",
                    real.display()
                ),
            ));
        }
        if meta.mode() & GROUP_OR_OTHER_WRITE != 0 {
            return Err(unsafe_cache(
                &real,
                format!(
                    "is writable by group or others (mode {:o})",
                    meta.mode() & 0o7777
                ),
                format!("`chmod 700 {}`", real.display()),
            ));
        }
        for above in real.ancestors().skip(1) {
            let m = stat(above, true)?;
            if m.uid() != me && m.uid() != 0 {
                return Err(unsafe_cache(
                    above,
                    format!(
                        "(a directory above the cache) is owned by uid {}, neither this user nor root",
                        m.uid()
                    ),
                    "put the cache under a directory that only you or root control (BULWARK_WASM_CACHE)"
                        .into(),
                ));
            }
            if m.mode() & GROUP_OR_OTHER_WRITE != 0 && m.mode() & STICKY == 0 {
                return Err(unsafe_cache(
                    above,
                    format!(
                        "(a directory above the cache) is writable by group or others (mode {:o}): they could replace the cache",
                        m.mode() & 0o7777
                    ),
                    format!(
                        "`chmod go-w {}`, or put the cache elsewhere (BULWARK_WASM_CACHE)",
                        above.display()
                    ),
                ));
            }
        }
        let closed = meta.mode() & 0o077 == 0;
        let mut dirs = vec![real.clone()];
        while let Some(d) = dirs.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| {
                SandboxError::Engine(format!("cache directory {}: {e}", d.display()))
            })?;
            for entry in entries {
                let entry = entry.map_err(|e| {
                    SandboxError::Engine(format!("cache directory {}: {e}", d.display()))
                })?;
                let path = entry.path();
                let m = stat(&path, false)?;
                if m.file_type().is_symlink() {
                    return Err(unsafe_cache(
                        &path,
                        "is a symbolic link inside the cache".into(),
                        format!("remove it: `rm {}`", path.display()),
                    ));
                }
                if m.uid() != me {
                    return Err(unsafe_cache(
                        &path,
                        format!("is owned by uid {}, not by this user (uid {me})", m.uid()),
                        format!("remove it: `rm -r {}`", path.display()),
                    ));
                }
                if !closed && m.mode() & GROUP_OR_OTHER_WRITE != 0 {
                    return Err(unsafe_cache(
                        &path,
                        format!(
                            "is writable by group or others (mode {:o})",
                            m.mode() & 0o7777
                        ),
                        format!("`chmod -R go-w {}`", real.display()),
                    ));
                }
                if m.is_dir() {
                    dirs.push(path);
                }
            }
        }
        Ok(())
    }
}
