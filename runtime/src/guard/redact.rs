//! The output guard: personal data and secrets are found and replaced before text
//! leaves — to a channel, a log line or the audit trail.
//!
//! Each finding is replaced by `[REDACTED:KIND:HASH]`, where HASH is a keyed hash
//! (HMAC-SHA-256 under the runtime's redaction key, first 8 hex digits) of the value:
//! the same value redacts to the same mark, so records stay correlatable, and the
//! value cannot be recovered or confirmed without the key. Card numbers must pass
//! Luhn and IBANs their mod-97 checksum, so order numbers and dates are left alone.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// What the output guard looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// Email addresses.
    Email,
    /// Phone numbers in international or common national formats.
    Phone,
    /// National identifiers: US SSN, UK National Insurance number.
    NationalId,
    /// Payment card numbers that pass Luhn.
    Card,
    /// IBANs that pass the mod-97 check.
    Iban,
    /// API keys and tokens of common providers, JWTs, bearer tokens.
    ApiKey,
    /// PEM private keys and Bulwark secret keys.
    PrivateKey,
}

impl PiiKind {
    /// Every kind.
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::NationalId,
        PiiKind::Card,
        PiiKind::Iban,
        PiiKind::ApiKey,
        PiiKind::PrivateKey,
    ];

    /// Secrets only: what is never legitimate in output.
    pub const SECRETS: [PiiKind; 2] = [PiiKind::ApiKey, PiiKind::PrivateKey];

    /// The name used in redaction marks.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::NationalId => "national_id",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::ApiKey => "api_key",
            PiiKind::PrivateKey => "private_key",
        }
    }
}

impl std::str::FromStr for PiiKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PiiKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a kind of personal data; expected one of {}",
                    PiiKind::ALL.map(PiiKind::as_str).join(", ")
                )
            })
    }
}

/// One value found and replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What it was.
    pub kind: PiiKind,
    /// The keyed hash that replaced it.
    pub hash: String,
    /// Byte range in the input.
    pub start: usize,
    /// End of the byte range.
    pub end: usize,
}

/// Text with its findings replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redacted {
    /// The text to send.
    pub text: String,
    /// What was replaced.
    pub findings: Vec<Finding>,
}

/// Finds and redacts personal data and secrets.
#[derive(Clone)]
pub struct Redactor {
    key: [u8; 32],
    kinds: BTreeSet<PiiKind>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

struct Patterns {
    /// Literal-prefixed secrets: one pass, prefiltered on the prefixes.
    secrets: Regex,
    /// Emails, found around their `@`.
    email: Regex,
    /// Phones and national ids.
    numbers: Regex,
    /// Runs of digit groups (`4111 1111 1111 1111`): where cards are looked for.
    digit_runs: Regex,
    /// IBAN-shaped values.
    iban: Regex,
    nino: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("the constant redaction patterns compile");
        Patterns {
            secrets: re(concat!(
                r"(?s:-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z))",
                r"|(?-u:bulwark-ed25519-secret:[0-9a-fA-F]{16,})",
                r"|(?-u:\bAKIA[0-9A-Z]{16}\b|\bASIA[0-9A-Z]{16}\b)",
                r"|(?-u:\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b)",
                r"|(?-u:\bglpat-[A-Za-z0-9_\-]{20,})",
                r"|(?-u:\bxox[abposr]-[A-Za-z0-9\-]{10,})",
                r"|(?-u:\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,})",
                r"|(?-u:\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{20,})",
                r"|(?-u:\bAIza[0-9A-Za-z_\-]{35})",
                r"|(?-u:\bya29\.[0-9A-Za-z_\-]{20,})",
                r"|(?-u:\bnpm_[A-Za-z0-9]{36}\b)",
                r"|(?-u:\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,})",
                r"|(?-u:\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})",
                r"|(?-u:[Bb]earer\s+[A-Za-z0-9_\-\.=]{20,})",
                r"|(?-u:(?:api[_-]?key|secret|token|password|passwd)\x22?\s*[:=]\s*\x22?[A-Za-z0-9_\-]{24,})",
            )),
            email: re(r"(?-u:[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24})"),
            numbers: re(concat!(
                r"(?-u:\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){2,4}\b)",
                r"|(?-u:\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}\b)",
                r"|(?-u:\b\d{3}-\d{2}-\d{4}\b)",
                r"|(?-u:\b\d{3}[.\-]\d{3}[.\-]\d{4}\b)",
            )),
            digit_runs: re(r"(?-u:\d+(?:[ \-]\d+)*)"),
            iban: re(r"(?-u:\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b)"),
            nino: re(r"(?-u:\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b)"),
        }
    })
}

/// Luhn checksum over the digits of `s`.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The IBAN mod-97 check on a compact (no spaces) candidate.
pub(crate) fn iban_valid(compact: &str) -> bool {
    let b = compact.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c.to_ascii_uppercase() - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Card numbers within a run of digit groups: every span of whole groups with 13 to 19
/// digits that passes Luhn, the longest from each starting group.
fn cards_in(
    text: &str,
    run: std::ops::Range<usize>,
    found: &mut Vec<(PiiKind, std::ops::Range<usize>)>,
) {
    let bytes = text.as_bytes();
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut i = run.start;
    while i < run.end {
        let start = i;
        while i < run.end && bytes[i].is_ascii_digit() {
            i += 1;
        }
        groups.push(start..i);
        i += 1; // the separator
    }
    for first in 0..groups.len() {
        let mut digits: Vec<u8> = Vec::with_capacity(19);
        let mut best = None;
        for g in &groups[first..] {
            digits.extend(bytes[g.clone()].iter().map(|b| b - b'0'));
            if digits.len() > 19 {
                break;
            }
            if digits.len() >= 13 && luhn(&digits) {
                best = Some(groups[first].start..g.end);
            }
        }
        if let Some(range) = best {
            found.push((PiiKind::Card, range));
        }
    }
}

fn ssn_plausible(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, group, serial] = parts.as_slice() else {
        return false;
    };
    *area != "000"
        && *area != "666"
        && !area.starts_with('9')
        && *group != "00"
        && *serial != "0000"
}

impl Redactor {
    /// A redactor for every kind, hashing under `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Redactor {
            key,
            kinds: PiiKind::ALL.into_iter().collect(),
        }
    }

    /// Restricts it to `kinds`.
    pub fn with_kinds(mut self, kinds: impl IntoIterator<Item = PiiKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self
    }

    /// The kinds it looks for.
    pub fn kinds(&self) -> &BTreeSet<PiiKind> {
        &self.kinds
    }

    /// The keyed hash that stands for `value`.
    pub fn hash(&self, kind: PiiKind, value: &str) -> String {
        // HMAC accepts keys of any length; a 32-byte key cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::from("00000000");
        };
        mac.update(kind.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    /// Finds every value of the configured kinds, in order, without overlaps.
    pub fn find(&self, text: &str) -> Vec<(PiiKind, std::ops::Range<usize>)> {
        let p = patterns();
        let mut found: Vec<(PiiKind, std::ops::Range<usize>)> = Vec::new();
        let want = |k| self.kinds.contains(&k);
        if want(PiiKind::ApiKey) || want(PiiKind::PrivateKey) {
            for m in p.secrets.find_iter(text) {
                let s = m.as_str();
                let kind = if s.starts_with("-----BEGIN") || s.starts_with("bulwark-ed25519-secret")
                {
                    PiiKind::PrivateKey
                } else {
                    PiiKind::ApiKey
                };
                if want(kind) {
                    found.push((kind, m.range()));
                }
            }
        }
        if want(PiiKind::Email) && text.contains('@') {
            found.extend(p.email.find_iter(text).map(|m| (PiiKind::Email, m.range())));
        }
        if want(PiiKind::Iban) {
            for m in p.iban.find_iter(text) {
                let compact: String = m.as_str().chars().filter(|c| *c != ' ').collect();
                if iban_valid(&compact) {
                    found.push((PiiKind::Iban, m.range()));
                }
            }
        }
        if want(PiiKind::NationalId) {
            found.extend(
                p.nino
                    .find_iter(text)
                    .map(|m| (PiiKind::NationalId, m.range())),
            );
        }
        if want(PiiKind::Card) {
            for run in p.digit_runs.find_iter(text) {
                cards_in(text, run.range(), &mut found);
            }
        }
        if want(PiiKind::Phone) || want(PiiKind::NationalId) {
            for m in p.numbers.find_iter(text) {
                let s = m.as_str();
                let digits: Vec<u8> = s
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| b - b'0')
                    .collect();
                let kind = if s.len() == 11 && s.as_bytes()[3] == b'-' && s.as_bytes()[6] == b'-' {
                    ssn_plausible(s).then_some(PiiKind::NationalId)
                } else if s.starts_with(['+', '(']) || (digits.len() == 10 && s.len() == 12) {
                    (7..=15).contains(&digits.len()).then_some(PiiKind::Phone)
                } else {
                    None
                };
                if let Some(k) = kind.filter(|k| want(*k)) {
                    found.push((k, m.range()));
                }
            }
        }
        found.sort_by_key(|(_, r)| (r.start, std::cmp::Reverse(r.end)));
        let mut out: Vec<(PiiKind, std::ops::Range<usize>)> = Vec::with_capacity(found.len());
        for f in found {
            match out.last() {
                Some((_, last)) if f.1.start < last.end => {}
                _ => out.push(f),
            }
        }
        out
    }

    /// Redacts `text`.
    pub fn redact(&self, text: &str) -> Redacted {
        let found = self.find(text);
        if found.is_empty() {
            return Redacted {
                text: text.to_string(),
                findings: Vec::new(),
            };
        }
        let mut out = String::with_capacity(text.len());
        let mut findings = Vec::with_capacity(found.len());
        let mut last = 0;
        for (kind, range) in found {
            out.push_str(&text[last..range.start]);
            let hash = self.hash(kind, &text[range.clone()]);
            out.push_str("[REDACTED:");
            out.push_str(kind.as_str());
            out.push(':');
            out.push_str(&hash);
            out.push(']');
            findings.push(Finding {
                kind,
                hash,
                start: range.start,
                end: range.end,
            });
            last = range.end;
        }
        out.push_str(&text[last..]);
        Redacted {
            text: out,
            findings,
        }
    }

    /// Redacts every string inside a JSON value, in place. Returns how many values
    /// were replaced.
    pub fn redact_json(&self, value: &mut Value) -> usize {
        match value {
            Value::String(s) => {
                let r = self.redact(s);
                let n = r.findings.len();
                if n > 0 {
                    *s = r.text;
                }
                n
            }
            Value::Array(items) => items.iter_mut().map(|v| self.redact_json(v)).sum(),
            Value::Object(map) => map.values_mut().map(|v| self.redact_json(v)).sum(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new([7; 32])
    }

    fn kinds(text: &str) -> Vec<PiiKind> {
        r().find(text).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn each_kind_is_found_and_replaced_by_a_keyed_hash() {
        let text = "Mail ana.lopez@example.com or call +44 20 7946 0958. Card 4111 1111 1111 1111, \
                    IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789, NI AB 12 34 56 C, \
                    key AKIAIOSFODNN7EXAMPLE and sk-proj-abcdefghijklmnopqrstuvwxyz123456.";
        let out = r().redact(text);
        let got: Vec<PiiKind> = out.findings.iter().map(|f| f.kind).collect();
        assert_eq!(
            got,
            vec![
                PiiKind::Email,
                PiiKind::Phone,
                PiiKind::Card,
                PiiKind::Iban,
                PiiKind::NationalId,
                PiiKind::NationalId,
                PiiKind::ApiKey,
                PiiKind::ApiKey
            ],
            "{}",
            out.text
        );
        for leaked in [
            "ana.lopez",
            "4111",
            "DE89",
            "123-45",
            "AKIA",
            "sk-proj",
            "7946",
        ] {
            assert!(!out.text.contains(leaked), "{leaked} left in {}", out.text);
        }
        assert!(out.text.contains("[REDACTED:email:"));
    }

    #[test]
    fn checksums_keep_lookalikes_unredacted() {
        // Luhn fails: an order number.
        assert!(kinds("Order 4111 1111 1111 1112 shipped").is_empty());
        // mod-97 fails.
        assert!(kinds("Ref DE89 3704 0044 0532 0130 02").is_empty());
        // Dates, amounts and invoice numbers are not phones.
        assert!(kinds("On 2024-05-17 we paid 1,250.00 EUR for INV-2024-0042.").is_empty());
    }

    #[test]
    fn the_same_value_gets_the_same_mark_and_another_key_another() {
        let a = r().redact("x@y.example and x@y.example");
        assert_eq!(a.findings[0].hash, a.findings[1].hash);
        let b = Redactor::new([8; 32]).redact("x@y.example");
        assert_ne!(a.findings[0].hash, b.findings[0].hash);
    }

    #[test]
    fn private_keys_are_redacted_whole() {
        let pem = "before\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\nafter";
        let out = r().redact(pem);
        assert_eq!(out.findings.len(), 1);
        assert_eq!(out.findings[0].kind, PiiKind::PrivateKey);
        assert!(out.text.starts_with("before\n[REDACTED:private_key:"));
        assert!(out.text.ends_with("]\nafter"));
    }

    #[test]
    fn kinds_can_be_restricted() {
        let secrets_only = r().with_kinds(PiiKind::SECRETS);
        let out =
            secrets_only.redact("ana@example.com token ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(out.findings.len(), 1);
        assert!(out.text.starts_with("ana@example.com"));
    }

    #[test]
    fn json_strings_are_redacted_in_place() {
        let mut v =
            serde_json::json!({"to": "bob@example.org", "n": 4, "list": ["+1 (415) 555-0132"]});
        assert_eq!(r().redact_json(&mut v), 2);
        assert!(
            v["to"]
                .as_str()
                .is_some_and(|s| s.starts_with("[REDACTED:email:"))
        );
        assert_eq!(v["n"], 4);
    }

    #[test]
    fn checksums_agree_with_known_values() {
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(!iban_valid("GB82WEST12345698765433"));
        assert!(luhn(&[4, 0, 1, 2, 8, 8, 8, 8, 8, 8, 8, 8, 1, 8, 8, 1]));
    }
}
