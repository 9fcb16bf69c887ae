//! Envelopes: every message between nodes, versioned MessagePack signed by the
//! sender's holder key.
//!
//! The signature covers the exact fields received — destination, kind, message id,
//! send time, the token's id and the body's SHA-256 — under the domain tag
//! `bulwark-envelope-v1`. A receiving node [`Verifier::open`]s an envelope before any
//! actor sees it: the size is capped before decoding, then the format, the
//! destination (an envelope signed for another subject is refused), the send time
//! (±60 s), the token (verified against the cluster's root key, not revoked), the
//! holder's signature, and last the message id (each accepted once). Every refusal is
//! a typed [`EnvelopeError`] with a short [`EnvelopeError::reason`] for counting.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_capabilities::{
    DomainSignature, KeyPair, MAX_TOKEN_BYTES, PublicKey, ReplayGuard, Revocations, Token,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version of envelopes written now.
pub const ENVELOPE_FORMAT: u16 = 1;

/// The domain tag of envelope signatures.
pub const ENVELOPE_DOMAIN: &str = "bulwark-envelope-v1";

/// Largest envelope a node decodes, bytes.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// Accepted distance between an envelope's send time and the receiver's clock.
pub const ENVELOPE_WINDOW: Duration = Duration::from_secs(60);

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version ([`ENVELOPE_FORMAT`]).
    pub v: u16,
    /// The subject it is for.
    pub to: String,
    /// What it asks (`spawn`, `run`, `call`, `message`, `revoke`, ...).
    pub kind: String,
    /// A random single-use id.
    #[serde(with = "serde_bytes_16")]
    pub id: [u8; 16],
    /// When it was sent, ms since the epoch.
    pub sent_ms: u64,
    /// The sender's token (base64).
    pub token: String,
    /// The body (its own MessagePack).
    #[serde(with = "serde_bytes_vec")]
    pub body: Vec<u8>,
    /// The holder's signature over [`Envelope::signed_bytes`].
    #[serde(with = "serde_bytes_64")]
    pub sig: [u8; 64],
}

/// An envelope that passed every check.
#[derive(Debug)]
pub struct Opened {
    /// The sender's verified token.
    pub token: Token,
    /// What it asks.
    pub kind: String,
    /// Its id.
    pub id: [u8; 16],
    /// The body.
    pub body: Vec<u8>,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Larger than [`MAX_ENVELOPE_BYTES`]; not decoded.
    #[error("envelope of {0} bytes is larger than {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    /// Not an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A format this release does not read.
    #[error("envelope format {0} is not {ENVELOPE_FORMAT}")]
    Version(u16),
    /// Signed for another destination.
    #[error("envelope for `{to}` arrived on `{here}`")]
    Redirected {
        /// Its destination.
        to: String,
        /// Where it arrived.
        here: String,
    },
    /// Sent too long before or after the receiver's clock.
    #[error("envelope sent {skew_ms} ms away from this node's clock (window ±60 s)")]
    Stale {
        /// Distance, ms.
        skew_ms: u64,
    },
    /// The token does not verify against the cluster's root key.
    #[error("envelope token does not verify: {0}")]
    Token(String),
    /// The token (or a block of its chain) is revoked.
    #[error("envelope token is revoked")]
    Revoked,
    /// The signature is not the token holder's.
    #[error("envelope is not signed by its token's holder")]
    Signature,
    /// Its id was already accepted (or the replay cache is full).
    #[error("envelope replayed: {0}")]
    Replayed(String),
}

impl EnvelopeError {
    /// A short name for counting refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::TooLarge(_) => "too_large",
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::Version(_) => "version",
            EnvelopeError::Redirected { .. } => "redirected",
            EnvelopeError::Stale { .. } => "stale",
            EnvelopeError::Token(_) => "token",
            EnvelopeError::Revoked => "revoked",
            EnvelopeError::Signature => "signature",
            EnvelopeError::Replayed(_) => "replayed",
        }
    }
}

impl Envelope {
    /// Seals `body` for `to` as `kind`, signed with the holder key of `token`.
    pub fn seal(
        token: &Token,
        holder: &KeyPair,
        to: &str,
        kind: &str,
        body: Vec<u8>,
        now: SystemTime,
    ) -> Result<Envelope, EnvelopeError> {
        let token_text = token
            .to_base64()
            .map_err(|e| EnvelopeError::Token(e.to_string()))?;
        let mut envelope = Envelope {
            v: ENVELOPE_FORMAT,
            to: to.to_string(),
            kind: kind.to_string(),
            id: rand::random(),
            sent_ms: unix_ms(now),
            token: token_text,
            body,
            sig: [0; 64],
        };
        envelope.sig =
            DomainSignature::sign(holder, ENVELOPE_DOMAIN, &envelope.signed_bytes(token)).0;
        Ok(envelope)
    }

    /// The bytes the holder signs: destination, kind, id, send time, the token's id
    /// and the body's SHA-256, each length-prefixed.
    pub fn signed_bytes(&self, token: &Token) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.to.len() + self.kind.len());
        let mut field = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        };
        field(self.to.as_bytes());
        field(self.kind.as_bytes());
        field(&self.id);
        field(&self.sent_ms.to_be_bytes());
        field(token.id().as_bytes());
        field(&Sha256::digest(&self.body));
        out
    }

    /// The envelope as MessagePack.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        rmp_serde::to_vec_named(self).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Decodes an envelope, its size capped first. Decoding checks nothing else: see
    /// [`Verifier::open`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }
}

/// Most verified tokens a verifier remembers.
const TOKEN_CACHE: usize = 4096;

/// Checks envelopes arriving at one node.
pub struct Verifier {
    root: PublicKey,
    replay: Mutex<ReplayGuard>,
    /// Tokens already verified against the root, by the SHA-256 of their text: a
    /// token's chain is checked once, its holder's signature on every envelope.
    verified: Mutex<std::collections::HashMap<[u8; 32], Token>>,
}

impl Verifier {
    /// A verifier for tokens issued under `root`.
    pub fn new(root: PublicKey) -> Self {
        Verifier {
            root,
            replay: Mutex::new(ReplayGuard::with_limits(
                ENVELOPE_WINDOW.as_secs(),
                ReplayGuard::DEFAULT_CAPACITY,
            )),
            verified: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The token in `text`, verified against the root (once per distinct token).
    fn token(&self, text: &str) -> Result<Token, EnvelopeError> {
        let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut cache = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(token) = cache.get(&key) {
            return Ok(token.clone());
        }
        let token = Token::from_base64(text, &self.root)
            .map_err(|e| EnvelopeError::Token(e.to_string()))?;
        if cache.len() >= TOKEN_CACHE {
            cache.clear();
        }
        cache.insert(key, token.clone());
        Ok(token)
    }

    /// Every check, in order, on `bytes` received on `subject` at `now`.
    pub fn open(
        &self,
        bytes: &[u8],
        subject: &str,
        now: SystemTime,
        revoked: &Revocations,
    ) -> Result<Opened, EnvelopeError> {
        let envelope = Envelope::from_bytes(bytes)?;
        if envelope.v != ENVELOPE_FORMAT {
            return Err(EnvelopeError::Version(envelope.v));
        }
        if envelope.to != subject {
            return Err(EnvelopeError::Redirected {
                to: envelope.to,
                here: subject.to_string(),
            });
        }
        let skew_ms = envelope.sent_ms.abs_diff(unix_ms(now));
        if skew_ms > ENVELOPE_WINDOW.as_millis() as u64 {
            return Err(EnvelopeError::Stale { skew_ms });
        }
        if envelope.token.len() > MAX_TOKEN_BYTES * 4 / 3 + 4 {
            return Err(EnvelopeError::Token("larger than a token can be".into()));
        }
        let token = self.token(&envelope.token)?;
        if token.revocation_ids().iter().any(|id| revoked.contains(id)) {
            return Err(EnvelopeError::Revoked);
        }
        token
            .verify_holder_signature(
                ENVELOPE_DOMAIN,
                &envelope.signed_bytes(&token),
                &DomainSignature(envelope.sig),
            )
            .map_err(|_| EnvelopeError::Signature)?;
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit_message(&token, &envelope.id, envelope.sent_ms / 1000, now)
            .map_err(|d| EnvelopeError::Replayed(d.to_string()))?;
        Ok(Opened {
            token,
            kind: envelope.kind,
            id: envelope.id,
            body: envelope.body,
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Fixed-size byte arrays as MessagePack binary.
macro_rules! bytes_array {
    ($name:ident, $n:expr) => {
        mod $name {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(v: &[u8; $n], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; $n], D::Error> {
                let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
                bytes.into_vec().try_into().map_err(|b: Vec<u8>| {
                    serde::de::Error::custom(format!("{} bytes, not {}", b.len(), $n))
                })
            }
        }
    };
}
bytes_array!(serde_bytes_16, 16);
bytes_array!(serde_bytes_64, 64);

mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        serde_bytes::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_capabilities::{MicroUsd, RootGrant, Tier};
    use proptest::prelude::*;

    struct Fixture {
        root: KeyPair,
        holder: KeyPair,
        token: Token,
        now: SystemTime,
    }

    fn fixture() -> Fixture {
        let root = KeyPair::generate();
        let holder = KeyPair::generate();
        let now = SystemTime::now();
        let grant = RootGrant::new(
            "acme",
            "a1",
            holder.public(),
            MicroUsd::from_usd(1).expect("a dollar"),
            now + Duration::from_secs(3600),
            4,
        )
        .tool("echo", Tier::Auto);
        let token = Token::mint(&root, grant).expect("mint");
        Fixture {
            root,
            holder,
            token,
            now,
        }
    }

    const HERE: &str = "bulwark.demo.agent.a2";

    fn sealed(f: &Fixture, at: SystemTime) -> Envelope {
        Envelope::seal(&f.token, &f.holder, HERE, "message", b"hello".to_vec(), at).expect("seal")
    }

    fn open(f: &Fixture, bytes: &[u8]) -> Result<Opened, EnvelopeError> {
        Verifier::new(f.root.public()).open(bytes, HERE, f.now, &Revocations::new())
    }

    #[test]
    fn an_honest_envelope_opens_once() {
        let f = fixture();
        let bytes = sealed(&f, f.now).to_bytes().expect("encode");
        let verifier = Verifier::new(f.root.public());
        let opened = verifier
            .open(&bytes, HERE, f.now, &Revocations::new())
            .expect("honest envelope");
        assert_eq!(opened.kind, "message");
        assert_eq!(opened.body, b"hello");
        assert_eq!(opened.token.id(), f.token.id());
        let again = verifier.open(&bytes, HERE, f.now, &Revocations::new());
        assert!(
            matches!(again, Err(EnvelopeError::Replayed(_))),
            "{again:?}"
        );
    }

    #[test]
    fn every_attack_is_refused_with_its_reason() {
        let f = fixture();
        let honest = sealed(&f, f.now);

        let huge = vec![0u8; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(open(&f, &huge).unwrap_err().reason(), "too_large");
        assert_eq!(open(&f, b"\xc1garbage").unwrap_err().reason(), "malformed");

        let mut future = honest.clone();
        future.v = ENVELOPE_FORMAT + 1;
        let err = open(&f, &future.to_bytes().expect("encode")).unwrap_err();
        assert_eq!(err.reason(), "version");

        let bytes = honest.to_bytes().expect("encode");
        let err = Verifier::new(f.root.public())
            .open(
                &bytes,
                "bulwark.demo.agent.other",
                f.now,
                &Revocations::new(),
            )
            .unwrap_err();
        assert_eq!(err.reason(), "redirected");

        // Re-addressing it is caught by the signature.
        let mut readdressed = honest.clone();
        readdressed.to = "bulwark.demo.agent.other".into();
        let err = Verifier::new(f.root.public())
            .open(
                &readdressed.to_bytes().expect("encode"),
                "bulwark.demo.agent.other",
                f.now,
                &Revocations::new(),
            )
            .unwrap_err();
        assert_eq!(err.reason(), "signature");

        let old = sealed(&f, f.now - Duration::from_secs(120));
        let err = open(&f, &old.to_bytes().expect("encode")).unwrap_err();
        assert_eq!(err.reason(), "stale");

        let mut changed = honest.clone();
        changed.body = b"pay the attacker".to_vec();
        let err = open(&f, &changed.to_bytes().expect("encode")).unwrap_err();
        assert_eq!(err.reason(), "signature");

        let thief = KeyPair::generate();
        let stolen =
            Envelope::seal(&f.token, &thief, HERE, "message", b"hi".to_vec(), f.now).expect("seal");
        let err = open(&f, &stolen.to_bytes().expect("encode")).unwrap_err();
        assert_eq!(err.reason(), "signature");

        let mut unsigned = honest.clone();
        unsigned.sig = [0; 64];
        let err = open(&f, &unsigned.to_bytes().expect("encode")).unwrap_err();
        assert_eq!(err.reason(), "signature");

        let other = fixture();
        let foreign = sealed(&other, f.now);
        let err = open(&f, &foreign.to_bytes().expect("encode")).unwrap_err();
        assert_eq!(err.reason(), "token");

        let mut revoked = Revocations::new();
        revoked.insert(f.token.revocation_ids()[0].clone());
        let err = Verifier::new(f.root.public())
            .open(&bytes, HERE, f.now, &revoked)
            .unwrap_err();
        assert_eq!(err.reason(), "revoked");

        // None of the refusals used up the honest envelope's id.
        assert!(open(&f, &bytes).is_ok());
    }

    #[test]
    fn a_token_revoked_after_it_was_cached_is_refused() {
        let f = fixture();
        let verifier = Verifier::new(f.root.public());
        let first = sealed(&f, f.now).to_bytes().expect("encode");
        verifier
            .open(&first, HERE, f.now, &Revocations::new())
            .expect("the token is verified and remembered");
        let mut revoked = Revocations::new();
        revoked.insert(f.token.revocation_ids()[0].clone());
        let second = sealed(&f, f.now).to_bytes().expect("encode");
        let err = verifier.open(&second, HERE, f.now, &revoked).unwrap_err();
        assert_eq!(err.reason(), "revoked");
        // The same remembered token still opens an honest envelope while unrevoked.
        let third = sealed(&f, f.now).to_bytes().expect("encode");
        assert!(
            verifier
                .open(&third, HERE, f.now, &Revocations::new())
                .is_ok()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_are_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let f = fixture();
            prop_assert!(open(&f, &bytes).is_err());
        }

        #[test]
        fn a_changed_byte_never_opens_as_another_message(at in 0usize..4096, flip in 1u8..=255) {
            let f = fixture();
            let honest = sealed(&f, f.now);
            let mut bytes = honest.to_bytes().expect("encode");
            let at = at % bytes.len();
            bytes[at] ^= flip;
            if let Ok(opened) = open(&f, &bytes) {
                // Only an encoding that decodes to the very same message may open.
                prop_assert_eq!(opened.body, honest.body);
                prop_assert_eq!(opened.kind, honest.kind);
                prop_assert_eq!(opened.id, honest.id);
            }
        }
    }
}
