//! The audit key: keys the chain (HMAC-SHA256 per entry) and signs checkpoints
//! (Ed25519). It is a file outside the database, mode 0600, refused when others can
//! read it; whoever can rewrite the database but not read this file cannot forge an
//! entry or a checkpoint.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::AuditError;

/// The audit key file's default name inside a data directory.
pub const AUDIT_KEY_FILE: &str = "audit.key";

/// Prefix of the key file format: `bulwark-audit-key-v1:<64 hex digits>`.
const PREFIX: &str = "bulwark-audit-key-v1:";
/// A key file is one short line.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The audit trail's key. The chain key and the checkpoint signing key are both
/// derived from one 32-byte secret.
#[derive(Clone)]
pub struct AuditKey {
    /// HMAC-SHA256 keyed once with the chain key; cloned per entry.
    mac: Hmac<Sha256>,
    signing: SigningKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

fn derive(secret: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    // A 32-byte key is always a valid HMAC key.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(label);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

impl AuditKey {
    fn from_secret(secret: &[u8; 32]) -> Self {
        let chain = derive(secret, b"bulwark audit chain key v2");
        let signing = derive(secret, b"bulwark audit checkpoint key v1");
        AuditKey {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(chain.as_slice())
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
            signing: SigningKey::from_bytes(&signing),
        }
    }

    /// Reads the key file at `path`. It must exist and be readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let io = |e: std::io::Error| AuditError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AuditError::MissingKey(path.to_path_buf()));
            }
            Err(e) => return Err(io(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuditError::InsecureKeyFile {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(AuditError::BadKeyFile(path.to_path_buf()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let hex_part = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| AuditError::BadKeyFile(path.to_path_buf()))?;
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_part, secret.as_mut_slice())
            .map_err(|_| AuditError::BadKeyFile(path.to_path_buf()))?;
        Ok(Self::from_secret(&secret))
    }

    /// Reads the key file at `path`, creating it (mode 0600) with a fresh random key
    /// when there is none.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        match Self::load(path) {
            Err(AuditError::MissingKey(_)) => {}
            other => return other,
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::Rng::fill(&mut rand::rngs::OsRng, secret.as_mut_slice());
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match created {
            Ok(f) => f,
            // Created by someone else in the meantime: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::load(path),
            Err(e) => {
                return Err(AuditError::Io {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        let text = Zeroizing::new(format!("{PREFIX}{}\n", hex::encode(secret.as_slice())));
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| AuditError::Io {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Self::from_secret(&secret))
    }

    /// The checkpoint signing key's public half, hex: what an external anchor pins.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().to_bytes())
    }

    /// HMAC-SHA256 of `body` under the chain key, hex.
    pub(crate) fn mac_hex(&self, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `tag_hex` is the MAC of `body` (compared in constant time).
    pub(crate) fn mac_matches(&self, body: &[u8], tag_hex: &str) -> bool {
        let Ok(tag) = hex::decode(tag_hex) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }

    /// Signs `message` with the checkpoint key, hex.
    pub(crate) fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    /// Whether `sig_hex` is this key's signature of `message`.
    pub(crate) fn signature_matches(&self, message: &[u8], sig_hex: &str) -> bool {
        let mut sig = [0u8; 64];
        if hex::decode_to_slice(sig_hex, &mut sig).is_err() {
            return false;
        }
        let public: VerifyingKey = self.signing.verifying_key();
        public
            .verify(message, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok()
    }
}

/// Where the audit key of `data_dir` lives unless configured elsewhere.
pub(crate) fn default_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(AUDIT_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_private_and_read_back_as_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_KEY_FILE);
        let made = AuditKey::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let read = AuditKey::load(&path).unwrap();
        assert_eq!(made.public_hex(), read.public_hex());
        assert_eq!(made.mac_hex(b"entry"), read.mac_hex(b"entry"));
        assert!(read.mac_matches(b"entry", &made.mac_hex(b"entry")));
        assert!(!read.mac_matches(b"entry!", &made.mac_hex(b"entry")));
        let sig = made.sign_hex(b"checkpoint");
        assert!(read.signature_matches(b"checkpoint", &sig));
        assert!(!read.signature_matches(b"checkpoint2", &sig));
        assert!(!read.signature_matches(b"checkpoint", "zz"));
    }

    #[test]
    fn another_key_neither_macs_nor_signs_alike() {
        let dir = tempfile::tempdir().unwrap();
        let a = AuditKey::load_or_create(&dir.path().join("a.key")).unwrap();
        let b = AuditKey::load_or_create(&dir.path().join("b.key")).unwrap();
        assert!(!b.mac_matches(b"entry", &a.mac_hex(b"entry")));
        assert!(!b.signature_matches(b"checkpoint", &a.sign_hex(b"checkpoint")));
    }

    #[test]
    fn malformed_or_exposed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_KEY_FILE);
        assert!(matches!(
            AuditKey::load(&path),
            Err(AuditError::MissingKey(_))
        ));
        std::fs::write(&path, "not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            AuditKey::load(&path),
            Err(AuditError::BadKeyFile(_))
        ));
        // An existing file is never replaced by a fresh key.
        assert!(matches!(
            AuditKey::load_or_create(&path),
            Err(AuditError::BadKeyFile(_))
        ));
        std::fs::write(&path, format!("{PREFIX}{}\n", "ab".repeat(32))).unwrap();
        assert!(AuditKey::load(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = AuditKey::load(&path).unwrap_err();
        assert!(
            matches!(err, AuditError::InsecureKeyFile { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
