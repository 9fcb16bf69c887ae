//! Credentials: secrets encrypted at rest (ChaCha20-Poly1305, key in a 0600 file).
//!
//! A tool receives a secret only when the calling token grants `secret:NAME` (checked
//! by the gate, like a tool); the store itself never decides who may read.

use crate::layout;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::journal::{Batch, Journal, Mode};

/// The key file inside a data directory.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Why a secret operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The key file is readable by others.
    #[error(
        "{path} has mode {mode:o}: the secrets key must be readable by its owner only (chmod 600 {path})"
    )]
    InsecureKeyFile {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The key file is not 64 hex digits.
    #[error("{0} is not a secrets key (64 hex digits)")]
    BadKeyFile(PathBuf),
    /// No secret of that name.
    #[error("no secret named `{0}`")]
    Missing(String),
    /// The stored ciphertext does not decrypt: tampered, or another key.
    #[error("secret `{0}` does not decrypt with this key (tampered or wrong key)")]
    Corrupt(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file system failed.
    #[error("{0}")]
    Io(String),
}

/// Encrypted secrets in the runtime's database.
pub struct SecretStore {
    cipher: ChaCha20Poly1305,
    sealer: Sealer,
    journal: Journal,
    redaction_key: [u8; 32],
}

fn load_or_create_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    let mut key = Zeroizing::new([0u8; 32]);
    if path.exists() {
        let meta = std::fs::metadata(path).map_err(|e| SecretError::Io(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::InsecureKeyFile {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| SecretError::Io(e.to_string()))?,
        );
        hex::decode_to_slice(text.trim(), key.as_mut_slice())
            .map_err(|_| SecretError::BadKeyFile(path.to_path_buf()))?;
    } else {
        rand::Rng::fill(&mut rand::rngs::OsRng, key.as_mut_slice());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| SecretError::Io(format!("{}: {e}", path.display())))?;
        let text = Zeroizing::new(hex::encode(key.as_slice()));
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| SecretError::Io(e.to_string()))?;
    }
    Ok(key)
}

/// Encrypts records at rest that hold personal data (proposals' arguments and
/// results) under a key derived from the secrets key: the database file alone shows
/// none of it.
#[derive(Clone)]
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
}

/// `nonce ‖ ciphertext` of `plain`, authenticated with `aad`.
fn encrypt(cipher: &ChaCha20Poly1305, aad: &str, plain: &[u8]) -> Result<Vec<u8>, SecretError> {
    let nonce_bytes: [u8; 12] = rand::random();
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SecretError::Corrupt(aad.to_string()))?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The plain text of what [`encrypt`] made with the same `aad`.
fn decrypt(cipher: &ChaCha20Poly1305, aad: &str, stored: &[u8]) -> Result<Vec<u8>, SecretError> {
    let corrupt = || SecretError::Corrupt(aad.to_string());
    if stored.len() < 12 {
        return Err(corrupt());
    }
    let (nonce, ciphertext) = stored.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| corrupt())?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| corrupt())
}

/// What sealed bytes start with (JSON never does).
const SEALED_MAGIC: &[u8; 4] = b"BWS1";

impl Sealer {
    fn derive(key: &[u8; 32]) -> Result<Self, SecretError> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
            .map_err(|e| SecretError::Io(e.to_string()))?;
        mac.update(b"bulwark record seal v1");
        let derived: [u8; 32] = mac.finalize().into_bytes().into();
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(derived)),
        })
    }

    /// Seals `plain`, bound to `context` (the record's key): moved to another key,
    /// it does not open.
    pub(crate) fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut out = SEALED_MAGIC.to_vec();
        out.extend_from_slice(&encrypt(&self.cipher, context, plain)?);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] made; bytes written before sealing (plain JSON) are
    /// returned as they are.
    pub(crate) fn open<'a>(
        &self,
        context: &str,
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, SecretError> {
        match stored.strip_prefix(SEALED_MAGIC.as_slice()) {
            Some(rest) => decrypt(&self.cipher, context, rest).map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(stored)),
        }
    }

    /// The sealer of a data directory that already has a secrets key (none is created).
    pub(crate) fn for_data_dir(data_dir: &Path) -> Result<Self, SecretError> {
        let key = existing_key(data_dir)?;
        Self::derive(&key)
    }
}

/// The redaction key is derived, never stored: hashes of redacted values stay stable
/// across restarts and mean nothing without the secrets key.
fn derive_redaction_key(key: &[u8; 32]) -> Result<[u8; 32], SecretError> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .map_err(|e| SecretError::Io(e.to_string()))?;
    mac.update(b"bulwark redaction key v1");
    Ok(mac.finalize().into_bytes().into())
}

/// The key a runtime on `data_dir` hashes redacted values under, so a tool can produce
/// the same marks as its audit trail. The data directory must already have a secrets
/// key; none is created.
pub fn redaction_key(data_dir: &Path) -> Result<[u8; 32], SecretError> {
    let key = existing_key(data_dir)?;
    derive_redaction_key(&key)
}

/// The secrets key of a data directory that already has one (none is created).
fn existing_key(data_dir: &Path) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    let path = data_dir.join(SECRETS_KEY_FILE);
    if !path.exists() {
        return Err(SecretError::Io(format!(
            "{} does not exist: {} is not a runtime's data directory",
            path.display(),
            data_dir.display()
        )));
    }
    load_or_create_key(&path)
}

impl SecretStore {
    pub(crate) fn open(data_dir: &Path, journal: Journal) -> Result<Self, SecretError> {
        let key = load_or_create_key(&data_dir.join(SECRETS_KEY_FILE))?;
        let redaction_key = derive_redaction_key(&key)?;
        Ok(SecretStore {
            sealer: Sealer::derive(&key)?,
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            journal,
            redaction_key,
        })
    }

    /// Seals records at rest.
    pub(crate) fn sealer(&self) -> Sealer {
        self.sealer.clone()
    }

    /// The key under which redacted values are hashed.
    pub(crate) fn redaction_key(&self) -> [u8; 32] {
        self.redaction_key
    }

    fn key(name: &str) -> String {
        layout::key(layout::SECRET, name)
    }

    /// Stores (or replaces) a secret, durably.
    pub async fn put(&self, name: &str, value: &str) -> Result<(), SecretError> {
        let stored = encrypt(&self.cipher, name, value.as_bytes())?;
        let batch = Batch {
            kv: vec![(Self::key(name), Some(stored))],
            ..Batch::default()
        };
        self.journal
            .write(batch, Mode::Durable, SystemTime::now())
            .await?;
        Ok(())
    }

    /// Decrypts a secret. Only the gate calls this, after authorizing the caller.
    pub(crate) fn get(&self, name: &str) -> Result<Zeroizing<String>, SecretError> {
        let stored = self
            .journal
            .kv_get(&Self::key(name))?
            .ok_or_else(|| SecretError::Missing(name.to_string()))?;
        let plain = decrypt(&self.cipher, name, &stored)?;
        String::from_utf8(plain)
            .map(Zeroizing::new)
            .map_err(|_| SecretError::Corrupt(name.to_string()))
    }

    /// Whether the stored bytes of a secret contain `needle` (for tests proving the
    /// value is not stored in clear).
    #[doc(hidden)]
    pub fn raw_contains(&self, name: &str, needle: &[u8]) -> bool {
        self.journal
            .kv_get(&Self::key(name))
            .ok()
            .flatten()
            .is_some_and(|raw| raw.windows(needle.len()).any(|w| w == needle))
    }
}
