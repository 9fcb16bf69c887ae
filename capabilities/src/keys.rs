//! Ed25519 keys: the cluster root authority, agents' holder keys and approvers' keys.
//!
//! Private keys live in text files created with mode 0600; a private key file that
//! anyone but its owner can read is refused, because a leaked root or holder key is
//! the one thing the capability model cannot contain.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::KeyError;

/// Prefix of the private key file format: `bulwark-ed25519-secret:<64 hex digits>`.
const SECRET_PREFIX: &str = "bulwark-ed25519-secret:";
/// A key file is a single short line; anything larger is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// An ed25519 key pair. The secret half never leaves this type except through
/// [`KeyPair::save`], which writes it to a 0600 file.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    /// The same key in biscuit's form, derived once: deriving it costs a scalar
    /// multiplication, which every attenuation would otherwise pay again.
    biscuit: std::sync::Arc<biscuit_auth::KeyPair>,
}

impl KeyPair {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Builds a key pair from its 32 secret bytes (for tests and deterministic fixtures).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self::from_signing(SigningKey::from_bytes(secret))
    }

    fn from_signing(signing: SigningKey) -> Self {
        // The conversion cannot fail: both sides are raw 32-byte ed25519 secrets.
        let private = biscuit_auth::PrivateKey::from_bytes(
            signing.as_bytes(),
            biscuit_auth::Algorithm::Ed25519,
        )
        .expect("a 32-byte ed25519 secret is always a valid biscuit private key");
        KeyPair {
            signing,
            biscuit: std::sync::Arc::new(biscuit_auth::KeyPair::from(&private)),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The same key as a biscuit key pair, for signing token blocks.
    pub(crate) fn to_biscuit(&self) -> &biscuit_auth::KeyPair {
        &self.biscuit
    }

    /// Writes the private key to a new file with mode 0600. Refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::AlreadyExists(path.to_path_buf())
                } else {
                    io(source)
                }
            })?;
        let text = Zeroizing::new(format!(
            "{SECRET_PREFIX}{}\n",
            hex::encode(self.signing.as_bytes())
        ));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads a private key file written by [`KeyPair::save`]. The file must not be
    /// readable or writable by group or others.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                reason: format!("file is {} bytes; a key file is one short line", meta.len()),
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
        Self::parse_secret(text.trim(), path)
    }

    fn parse_secret(text: &str, path: &Path) -> Result<Self, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed {
            path: PathBuf::from(path),
            reason: reason.to_string(),
        };
        let hex_part = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| malformed("missing the `bulwark-ed25519-secret:` header"))?;
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_part, secret.as_mut_slice())
            .map_err(|_| malformed("the secret is not 64 hex digits"))?;
        Ok(Self::from_secret_bytes(&secret))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// An ed25519 public key, written as 64 lowercase hex digits.
///
/// Keys parsed from text or bytes supplied by a caller are checked to be valid points.
/// Keys read out of an already signature-verified token are kept as bytes and only
/// decompressed when a signature is checked against them; an invalid one then simply
/// never verifies.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| KeyError::BadPublicKey {
            reason: "expected 64 hex digits".into(),
        })?;
        Self::from_bytes(&bytes)
    }

    /// Parses the 32 raw bytes of a public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(|_| PublicKey(*bytes))
            .map_err(|_| KeyError::BadPublicKey {
                reason: "not a valid ed25519 point".into(),
            })
    }

    /// Keeps `bytes` without decompressing them (see the type's documentation).
    pub(crate) fn from_bytes_unchecked(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Verifies an ed25519 signature by this key (strict verification: no malleable
    /// signatures, no small-order keys). An invalid key verifies nothing.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    pub(crate) fn to_biscuit(self) -> Result<biscuit_auth::PublicKey, KeyError> {
        biscuit_auth::PublicKey::from_bytes(&self.0, biscuit_auth::Algorithm::Ed25519).map_err(
            |_| KeyError::BadPublicKey {
                reason: "not a valid ed25519 point".into(),
            },
        )
    }

    pub(crate) fn from_biscuit(key: &biscuit_auth::PublicKey) -> Option<Self> {
        key.to_bytes().try_into().ok().map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests;

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for holder keys inside token specs: hex, kept as bytes without decompression
/// (the spec is covered by the token's signatures; see [`PublicKey`]).
pub(crate) mod unchecked_hex {
    use super::PublicKey;

    pub fn serialize<S: serde::Serializer>(key: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&key.to_hex())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.as_bytes(), &mut bytes)
            .map_err(|_| serde::de::Error::custom("a holder key is 64 hex digits"))?;
        Ok(PublicKey::from_bytes_unchecked(bytes))
    }
}
