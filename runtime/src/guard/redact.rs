//! The output guard: personal data and secrets are found and replaced before text
//! leaves — to a channel, a log line or the audit trail.
//!
//! Each finding is replaced by `[REDACTED:KIND:HASH]`, where HASH is a keyed hash
//! (HMAC-SHA-256 under the runtime's redaction key, first 8 hex digits) of the value:
//! the same value redacts to the same mark, so records stay correlatable, and the
//! value cannot be recovered or confirmed without the key. Card numbers must pass
//! Luhn and IBANs their mod-97 checksum, so order numbers and dates are left alone.
//!
//! National identifiers with a distinctive shape are found anywhere when their check
//! passes: US SSN, UK National Insurance number, Spanish DNI and NIE (check letter),
//! Italian codice fiscale (check character), French NIR (key), Brazilian CPF
//! (`000.000.000-00`, two check digits). Shapes that any number could have — passport
//! numbers, bank account, routing and sort codes, and the Canadian SIN (Luhn), Dutch
//! BSN (11-check), Indian Aadhaar (Verhoeff), German Steuer-ID (ISO 7064) and
//! Personalausweis (7-3-1), unformatted CPF — count only right after a word that names
//! them (`passport no.`, `Reisepass`, `acct`, `Kontonummer`, `routing`, `BSN`, …, in
//! several languages), and must pass their check where one exists.

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
    /// National identifiers: US SSN, UK NINO, Spanish DNI/NIE, Italian codice
    /// fiscale, French NIR, Brazilian CPF, and after a naming word Canadian SIN, Dutch
    /// BSN, Indian Aadhaar, German Steuer-ID and Personalausweis, other ID cards.
    NationalId,
    /// Passport numbers, after a word naming them.
    Passport,
    /// Bank account numbers, routing numbers and sort codes, after a word naming them.
    BankAccount,
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
    pub const ALL: [PiiKind; 9] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::NationalId,
        PiiKind::Passport,
        PiiKind::BankAccount,
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
            PiiKind::Passport => "passport",
            PiiKind::BankAccount => "bank_account",
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
    keep_link_tokens: bool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("kinds", &self.kinds)
            .field("keep_link_tokens", &self.keep_link_tokens)
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
    /// National identifiers with a distinctive shape and a check.
    national: Regex,
    /// Words that name the value after them.
    anchors: Regex,
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
            national: re(concat!(
                // Spanish DNI and NIE.
                r"(?-u:\b(?:[XYZ]-?)?\d{7,8}-?[A-Z]\b)",
                // Italian codice fiscale (digits may be replaced by letters).
                r"|(?-u:\b[A-Z]{6}[0-9LMNP-V]{2}[A-EHLMPR-T][0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{3}[A-Z]\b)",
                // French NIR, with or without spaces.
                r"|(?-u:\b[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b)",
                // Brazilian CPF, formatted.
                r"|(?-u:\b\d{3}\.\d{3}\.\d{3}-\d{2}\b)",
            )),
            anchors: re(concat!(
                r"(?i)(?:",
                r"(?P<passport>(?-u:\b)passports?(?-u:\b)|(?-u:\b)pasaportes?(?-u:\b)|(?-u:\b)passeports?(?-u:\b)|(?-u:\b)reisepass(?-u:\b)|(?-u:\b)passnummer(?-u:\b)|(?-u:\b)pass-nr(?-u:\b)",
                r"|(?-u:\b)passaport[oie](?-u:\b)|(?-u:\b)paspoort(?-u:\b)|(?-u:\b)paszport(?-u:\b)|(?-u:\b)pasaport(?-u:\b)|(?-u:\b)passi(?-u:\b)|护照|護照|パスポート|여권|паспорт)",
                r"|(?P<account>(?-u:\b)account\s*(?:number|no(?-u:\b)|nr(?-u:\b)|num(?-u:\b)|#)|(?-u:\b)acct(?-u:\b)|(?-u:\b)a/c(?-u:\b)|(?-u:\b)(?:bank|checking|savings|current)\s+account(?-u:\b)",
                r"|(?-u:\b)kontonummer(?-u:\b)|(?-u:\b)konto(?:-?nr)?(?-u:\b)|(?-u:\b)kto(?:-?nr)?(?-u:\b)|(?-u:\b)num[ée]ro\s+de\s+compte(?-u:\b)|(?-u:\b)compte\s+bancaire(?-u:\b)",
                r"|(?-u:\b)n[úu]mero\s+de\s+cuenta(?-u:\b)|(?-u:\b)cuenta\s+bancaria(?-u:\b)|(?-u:\b)numero\s+di\s+conto(?-u:\b)|(?-u:\b)conto\s+corrente(?-u:\b)",
                r"|(?-u:\b)rekeningnummer(?-u:\b)|(?-u:\b)rekening(?-u:\b)|(?-u:\b)numer\s+konta(?-u:\b)|номер\s+сч[её]та|(?-u:\b)sort\s*code(?-u:\b)|(?-u:\b)bsb(?-u:\b))",
                r"|(?P<routing>(?-u:\b)routing(?:\s+(?:number|transit\s+number))?(?-u:\b)|(?-u:\b)aba(?-u:\b))",
                r"|(?P<sin>(?-u:\b)social\s+insurance(?:\s+number)?(?-u:\b)|(?-u:\b)sin(?-u:\b)|(?-u:\b)num[ée]ro\s+d'assurance\s+sociale(?-u:\b)|(?-u:\b)nas(?-u:\b))",
                r"|(?P<bsn>(?-u:\b)bsn(?-u:\b)|(?-u:\b)burgerservicenummer(?-u:\b)|(?-u:\b)sofi-?nummer(?-u:\b))",
                r"|(?P<aadhaar>(?-u:\b)aadhaa?r(?-u:\b)|आधार|(?-u:\b)uidai(?-u:\b))",
                r"|(?P<steuer>(?-u:\b)steuer-?id(?:entifikationsnummer)?(?-u:\b)|(?-u:\b)steuerliche\s+identifikationsnummer(?-u:\b)|(?-u:\b)steuer-?idnr(?-u:\b)|(?-u:\b)idnr(?-u:\b))",
                r"|(?P<ausweis>(?-u:\b)personalausweis(?:nummer)?(?-u:\b)|(?-u:\b)ausweis(?:-?nr|nummer)?(?-u:\b))",
                r"|(?P<idcard>(?-u:\b)id\s*card(?-u:\b)|(?-u:\b)identity\s+card(?-u:\b)|(?-u:\b)carte\s+d'identit[ée]|(?-u:\b)documento\s+de\s+identidad(?-u:\b)|(?-u:\b)carta\s+d'identit[àa]|(?-u:\b)national\s+id(?-u:\b))",
                r"|(?P<cpf>(?-u:\b)cpf(?-u:\b))",
                r")",
            )),
        }
    })
}

/// Query parameters that carry a one-time link token.
const LINK_TOKEN_PARAMS: &[&str] = &[
    "token",
    "reset_token",
    "password_reset_token",
    "confirmation_token",
    "confirm_token",
    "verification_token",
    "verify_token",
    "email_token",
    "invitation_token",
    "invite_token",
    "unlock_token",
];

/// Whether the secret found at `at` is the value of a one-time link-token parameter
/// in a URL query.
fn link_token(text: &str, at: usize) -> bool {
    if !text[at..].starts_with("token") {
        return false;
    }
    let before = &text[..at];
    let Some(q) = before.rfind(['?', '&', ';']) else {
        return false;
    };
    let name = format!("{}token", &before[q + 1..]);
    let is_query = before[..q].contains('?') || text.as_bytes()[q] == b'?';
    is_query && LINK_TOKEN_PARAMS.contains(&name.to_ascii_lowercase().as_str())
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

/// Spanish DNI (`12345678Z`) or NIE (`X1234567L`): the check letter.
fn dni_or_nie_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| *c != '-').collect();
    let (prefix, rest) = match compact.as_bytes().first() {
        Some(b'X') => ("0", &compact[1..]),
        Some(b'Y') => ("1", &compact[1..]),
        Some(b'Z') => ("2", &compact[1..]),
        _ => ("", compact.as_str()),
    };
    let Some((digits, letter)) = rest.split_at_checked(rest.len().saturating_sub(1)) else {
        return false;
    };
    if digits.len() + prefix.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(n) = format!("{prefix}{digits}").parse::<u32>() else {
        return false;
    };
    let table = b"TRWAGMYFPDXBNJZSQVHLCKE";
    letter.as_bytes() == [table[(n % 23) as usize]]
}

/// Italian codice fiscale: the check character over the first fifteen.
fn codice_fiscale_valid(s: &str) -> bool {
    const ODD: [u32; 26] = [
        1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24,
        23,
    ];
    let b = s.as_bytes();
    if b.len() != 16 {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in b[..15].iter().enumerate() {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else if c.is_ascii_uppercase() {
            u32::from(c - b'A')
        } else {
            return false;
        };
        sum += if i % 2 == 0 {
            // Digits take the value of the letter in the same place.
            ODD[v as usize]
        } else {
            v
        };
    }
    u32::from(b[15]) == u32::from(b'A') + sum % 26
}

/// French NIR: 13 digits (Corsica `2A`/`2B` as 19/18) and a key of 97 minus their
/// remainder by 97.
fn nir_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| *c != ' ').collect();
    if compact.len() != 15 {
        return false;
    }
    let body = compact[..13].replace("2A", "19").replace("2B", "18");
    let (Ok(n), Ok(key)) = (body.parse::<u64>(), compact[13..].parse::<u64>()) else {
        return false;
    };
    let month: u32 = compact[3..5].parse().unwrap_or(0);
    let month_ok =
        (1..=12).contains(&month) || (20..=42).contains(&month) || (50..=99).contains(&month);
    month_ok && key == 97 - n % 97
}

/// Brazilian CPF: two check digits; eleven equal digits are not a CPF.
fn cpf_valid(digits: &[u8]) -> bool {
    if digits.len() != 11 || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let check = |n: usize| {
        let sum: u32 = (0..n)
            .map(|i| u32::from(digits[i]) * (n as u32 + 1 - i as u32))
            .sum();
        (sum * 10 % 11 % 10) as u8
    };
    check(9) == digits[9] && check(10) == digits[10]
}

/// Dutch BSN: the 11-check (weights 9..2, and -1 for the last digit).
fn bsn_valid(digits: &[u8]) -> bool {
    if !(8..=9).contains(&digits.len()) || digits.iter().all(|d| *d == 0) {
        return false;
    }
    let padded: Vec<i64> = std::iter::repeat_n(0, 9 - digits.len())
        .chain(digits.iter().map(|d| i64::from(*d)))
        .collect();
    let sum: i64 = (0..8).map(|i| padded[i] * (9 - i as i64)).sum::<i64>() - padded[8];
    sum % 11 == 0
}

/// Indian Aadhaar: twelve digits, not starting with 0 or 1, Verhoeff check.
fn aadhaar_valid(digits: &[u8]) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 8, 7, 0, 6],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    if digits.len() != 12 || digits[0] < 2 {
        return false;
    }
    let mut c = 0u8;
    for (i, d) in digits.iter().rev().enumerate() {
        c = D[usize::from(c)][usize::from(P[i % 8][usize::from(*d)])];
    }
    c == 0
}

/// German Steuer-ID: eleven digits, no leading 0, one digit of the first ten
/// repeated (twice or three times), ISO 7064 MOD 11,10 check digit.
fn steuer_id_valid(digits: &[u8]) -> bool {
    if digits.len() != 11 || digits[0] == 0 {
        return false;
    }
    let mut counts = [0u8; 10];
    for d in &digits[..10] {
        counts[usize::from(*d)] += 1;
    }
    let repeated = counts.iter().filter(|c| **c > 1).count();
    if repeated != 1 || counts.iter().any(|c| *c > 3) {
        return false;
    }
    let mut product = 10u32;
    for d in &digits[..10] {
        let mut sum = (u32::from(*d) + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = sum * 2 % 11;
    }
    let check = (11 - product) % 10;
    check == u32::from(digits[10])
}

/// German Personalausweis document number: nine characters and, when present, the
/// 7-3-1 check digit.
fn ausweis_valid(s: &str) -> bool {
    let b = s.as_bytes();
    if !(9..=10).contains(&b.len())
        || !b[..9]
            .iter()
            .all(|c| c.is_ascii_digit() || b"CFGHJKLMNPRTVWXYZ".contains(c))
        || !b.iter().any(u8::is_ascii_digit)
    {
        return false;
    }
    if b.len() == 9 {
        return true;
    }
    let value = |c: u8| {
        if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        }
    };
    let sum: u32 = b[..9]
        .iter()
        .enumerate()
        .map(|(i, c)| value(*c) * [7, 3, 1][i % 3])
        .sum();
    b[9].is_ascii_digit() && sum % 10 == u32::from(b[9] - b'0')
}

/// US ABA routing number: the 3-7-1 check.
fn aba_valid(digits: &[u8]) -> bool {
    digits.len() == 9
        && digits
            .iter()
            .zip([3u32, 7, 1].iter().cycle())
            .map(|(d, w)| u32::from(*d) * w)
            .sum::<u32>()
            .is_multiple_of(10)
}

/// A national identifier of a distinctive shape, by its check.
fn national_valid(s: &str) -> bool {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    if s.contains('.') {
        return cpf_valid(&digits);
    }
    if s.len() == 16
        && !s.contains(' ')
        && s.as_bytes()[0].is_ascii_uppercase()
        && s.as_bytes()[1].is_ascii_uppercase()
    {
        return codice_fiscale_valid(s);
    }
    if s.ends_with(|c: char| c.is_ascii_uppercase()) {
        return dni_or_nie_valid(s);
    }
    nir_valid(s)
}

/// Words that may stand between a naming word and its value.
const FILLERS: &[&str] = &[
    "no",
    "nr",
    "num",
    "number",
    "numbers",
    "nummer",
    "numero",
    "número",
    "numéro",
    "n",
    "is",
    "was",
    "ist",
    "lautet",
    "est",
    "es",
    "é",
    "è",
    "de",
    "del",
    "do",
    "da",
    "van",
    "id",
    "code",
    "holder",
    "card",
    "号码",
    "號碼",
    "番号",
    "번호",
    "номер",
];

/// The value right after a naming word at `from`: separators and filler words
/// skipped, within a short reach.
fn value_after(text: &str, from: usize, digits_only: bool) -> Option<std::ops::Range<usize>> {
    let bytes = text.as_bytes();
    let limit = (from + 48).min(text.len());
    let mut i = from;
    loop {
        while i < limit
            && (bytes[i].is_ascii_whitespace()
                || matches!(
                    bytes[i],
                    b':' | b'#'
                        | b'='
                        | b'.'
                        | b'-'
                        | b'('
                        | b')'
                        | b'/'
                        | b'\''
                        | b'"'
                        | b'*'
                        | b','
                ))
        {
            i += 1;
        }
        // `n°`, `nº`, `№`.
        for sign in ["n°", "nº", "N°", "Nº", "№", "°", "º", "–", "—"] {
            if text[i..].starts_with(sign) {
                i += sign.len();
            }
        }
        if i >= limit {
            return None;
        }
        let word_end = text[i..]
            .char_indices()
            .find(|(_, c)| !c.is_alphabetic())
            .map_or(text.len(), |(o, _)| i + o);
        if word_end > i {
            let word = text[i..word_end].to_lowercase();
            if FILLERS.contains(&word.as_str()) {
                i = word_end;
                continue;
            }
        }
        break;
    }
    let start = i;
    let mut end = i;
    if digits_only {
        // Digit groups joined by single spaces, dashes or dots.
        while end < text.len() && bytes[end].is_ascii_digit() {
            end += 1;
            if end + 1 < text.len()
                && matches!(bytes[end], b' ' | b'-' | b'.')
                && bytes[end + 1].is_ascii_digit()
            {
                end += 1;
            }
        }
    } else {
        while end < text.len() && bytes[end].is_ascii_alphanumeric() {
            end += 1;
        }
    }
    // A value is a whole token.
    if end == start || bytes.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    Some(start..end)
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
            keep_link_tokens: false,
        }
    }

    /// Keeps one-time link tokens (`?token=…`, `&reset_token=…`) in URL queries: for
    /// links the reader asked for, whose host the exfiltration guard has judged.
    pub fn keeping_link_tokens(mut self, keep: bool) -> Self {
        self.keep_link_tokens = keep;
        self
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
                if want(kind) && !(self.keep_link_tokens && link_token(text, m.start())) {
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
            found.extend(
                p.national
                    .find_iter(text)
                    .filter(|m| national_valid(m.as_str()))
                    .map(|m| (PiiKind::NationalId, m.range())),
            );
        }
        if want(PiiKind::NationalId) || want(PiiKind::Passport) || want(PiiKind::BankAccount) {
            self.anchored(text, &mut found);
        }
        if want(PiiKind::Card) {
            let bytes = text.as_bytes();
            let glued = |i: Option<&u8>| i.is_some_and(u8::is_ascii_alphabetic);
            for run in p.digit_runs.find_iter(text) {
                // A group of digits glued to letters belongs to a longer token (a
                // hash, a hex key, an IBAN's check digits), not to a card number.
                let mut range = run.range();
                if glued(range.start.checked_sub(1).and_then(|i| bytes.get(i))) {
                    match bytes[range.clone()]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                    {
                        Some(sep) => range.start += sep + 1,
                        None => continue,
                    }
                }
                if glued(bytes.get(range.end)) {
                    match bytes[range.clone()]
                        .iter()
                        .rposition(|b| !b.is_ascii_digit())
                    {
                        Some(sep) => range.end = range.start + sep,
                        None => continue,
                    }
                }
                cards_in(text, range, &mut found);
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

    /// Values that count only after a word naming them.
    fn anchored(&self, text: &str, found: &mut Vec<(PiiKind, std::ops::Range<usize>)>) {
        let want = |k| self.kinds.contains(&k);
        for c in patterns().anchors.captures_iter(text) {
            let Some(anchor) = c.get(0) else { continue };
            // The kind named in a mark of an earlier redaction.
            if text[..anchor.start()].ends_with("[REDACTED:") {
                continue;
            }
            let group = |name: &str| c.name(name).is_some();
            let (kind, digits_only) = if group("passport") || group("idcard") || group("ausweis") {
                let kind = if group("passport") {
                    PiiKind::Passport
                } else {
                    PiiKind::NationalId
                };
                (kind, false)
            } else if group("account") || group("routing") {
                (PiiKind::BankAccount, true)
            } else {
                (PiiKind::NationalId, true)
            };
            if !want(kind) {
                continue;
            }
            let Some(range) = value_after(text, anchor.end(), digits_only) else {
                continue;
            };
            let value = &text[range.clone()];
            let digits: Vec<u8> = value
                .bytes()
                .filter(u8::is_ascii_digit)
                .map(|b| b - b'0')
                .collect();
            let valid = if group("passport") || group("idcard") {
                (6..=10).contains(&value.len())
                    && !value.bytes().any(|b| b.is_ascii_lowercase())
                    && !digits.is_empty()
            } else if group("ausweis") {
                ausweis_valid(value)
            } else if group("routing") {
                aba_valid(&digits)
            } else if group("account") {
                let anchor = anchor.as_str().to_lowercase();
                if anchor.starts_with("sort") || anchor == "bsb" {
                    digits.len() == 6
                } else {
                    (6..=20).contains(&digits.len())
                }
            } else if group("sin") {
                digits.len() == 9 && digits[0] != 0 && digits[0] != 8 && luhn(&digits)
            } else if group("bsn") {
                bsn_valid(&digits)
            } else if group("aadhaar") {
                aadhaar_valid(&digits)
            } else if group("steuer") {
                steuer_id_valid(&digits)
            } else if group("cpf") {
                cpf_valid(&digits)
            } else {
                false
            };
            if valid {
                found.push((kind, range));
            }
        }
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
        // A hex key whose digits happen to pass Luhn (712612481612274 does) is a key.
        let key = "0aaced712612481612274c9d4f9a65e308dba08150ca457ca9346ff3c581adac";
        assert!(kinds(key).is_empty(), "{:?}", kinds(key));
        // The same digits standing alone are a card.
        assert_eq!(
            kinds("paid with 712612481612274 today"),
            vec![PiiKind::Card]
        );
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

    /// Real-looking values of the new categories are found; everyday numbers beside
    /// them (orders, dates, phones, invoices, tracking, versions) are not.
    #[test]
    fn passports_accounts_and_national_ids_are_found_and_lookalikes_are_not() {
        let positives: &[(&str, PiiKind, &str)] = &[
            (
                "Passport No. X1234567, valid",
                PiiKind::Passport,
                "X1234567",
            ),
            ("Reisepass: C01X00T47", PiiKind::Passport, "C01X00T47"),
            (
                "N° de passeport : 12AB34567",
                PiiKind::Passport,
                "12AB34567",
            ),
            ("pasaporte número AAB123456", PiiKind::Passport, "AAB123456"),
            (
                "passport number is 533380006",
                PiiKind::Passport,
                "533380006",
            ),
            ("护照号码 E12345678", PiiKind::Passport, "E12345678"),
            ("Account number: 12345678", PiiKind::BankAccount, "12345678"),
            (
                "acct 0012345678 at the bank",
                PiiKind::BankAccount,
                "0012345678",
            ),
            ("Kontonummer 1234567890", PiiKind::BankAccount, "1234567890"),
            ("routing 021000021", PiiKind::BankAccount, "021000021"),
            ("sort code 12-34-56", PiiKind::BankAccount, "12-34-56"),
            (
                "número de cuenta 0049 1500 05 1234567890",
                PiiKind::BankAccount,
                "0049 1500 05 1234567890",
            ),
            (
                "rekeningnummer 123456789",
                PiiKind::BankAccount,
                "123456789",
            ),
            ("DNI 12345678Z", PiiKind::NationalId, "12345678Z"),
            ("NIE X1234567L", PiiKind::NationalId, "X1234567L"),
            (
                "codice fiscale RSSMRA85T10A562S",
                PiiKind::NationalId,
                "RSSMRA85T10A562S",
            ),
            (
                "NIR 1 85 05 78 006 084 91",
                PiiKind::NationalId,
                "1 85 05 78 006 084 91",
            ),
            ("CPF 529.982.247-25", PiiKind::NationalId, "529.982.247-25"),
            ("CPF: 52998224725", PiiKind::NationalId, "52998224725"),
            ("SIN 130 692 544", PiiKind::NationalId, "130 692 544"),
            ("BSN 111222333", PiiKind::NationalId, "111222333"),
            (
                "Aadhaar 2345 6789 0127",
                PiiKind::NationalId,
                "2345 6789 0127",
            ),
            ("Steuer-ID: 86095742719", PiiKind::NationalId, "86095742719"),
            (
                "Personalausweis T220001293",
                PiiKind::NationalId,
                "T220001293",
            ),
        ];
        let benign = [
            "Order #123456789 shipped on 2024-05-17.",
            "Invoice INV-2024-0042 for 1,250.00 EUR, due 17/05/2024.",
            "Call us at +1 415 555 0132 or 020 7946 0958 about order 20240517.",
            "Tracking 1Z999AA10123456784, parcel 2 of 3.",
            "Your passport photo must be 35x45 mm; the passport expires 2031-05-01.",
            "The account number of users grew to 12345678 this year.",
            "Meeting at 10:30 in room 4.12, build 2024.05.17, version 1.2.3.",
            "Flight LH 1234 on 17/05/2024, seat 12A, booking ref K9X2LM.",
            "Refund 123.456.789-00 was processed.",
            "Sin embargo, 123456789 unidades llegaron.",
            "NIR 1 85 05 78 006 084 00 is a sample with a wrong key.",
            "Ticket 12345678A, PR #4521, commit 9f8e7d6, SKU 8712345678906.",
            "BSN 111222334 fails its check; Aadhaar 2345 6789 0128 too.",
            "Konto 12 has 3 entries; routing 123456789 is not a valid number.",
            "Steuer-ID 12345678901 does not pass; SIN 130 692 545 neither.",
        ];
        let r = r().with_kinds([PiiKind::NationalId, PiiKind::Passport, PiiKind::BankAccount]);
        let mut hits = 0;
        for (text, kind, value) in positives {
            let found = r.find(text);
            let got: Vec<(PiiKind, &str)> = found
                .iter()
                .map(|(k, rg)| (*k, &text[rg.clone()]))
                .collect();
            assert_eq!(got, vec![(*kind, *value)], "{text}");
            hits += 1;
        }
        let false_positives = benign
            .iter()
            .filter(|text| {
                let found = r.find(text);
                if !found.is_empty() {
                    eprintln!("flagged: {text} {found:?}");
                }
                !found.is_empty()
            })
            .count();
        assert_eq!((hits, false_positives), (positives.len(), 0));
        // Redacted like every other kind.
        let out = r.redact("Passport No. X1234567 and acct 0012345678");
        assert!(
            out.text.starts_with("Passport No. [REDACTED:passport:"),
            "{}",
            out.text
        );
        assert!(
            out.text.contains("acct [REDACTED:bank_account:"),
            "{}",
            out.text
        );
        assert_eq!("bank_account".parse::<PiiKind>(), Ok(PiiKind::BankAccount));
    }

    #[test]
    fn one_time_link_tokens_are_kept_only_when_asked_and_only_in_a_query() {
        let link = "https://accounts.shop.test/reset?token=9f8e7d6c5b4a39281706f5e4d3c2b1a0aa";
        let secrets = r().with_kinds(PiiKind::SECRETS);
        assert_eq!(secrets.redact(link).findings.len(), 1);
        let keeping = secrets.clone().keeping_link_tokens(true);
        assert!(keeping.redact(link).findings.is_empty());
        // Outside a query, and other secret names, are still redacted.
        assert_eq!(
            keeping
                .redact("token=9f8e7d6c5b4a39281706f5e4d3c2b1a0aa and https://x.test/?api_key=9f8e7d6c5b4a39281706f5e4d3c2b1a0aa")
                .findings
                .len(),
            2
        );
        assert_eq!(
            keeping
                .redact("https://x.test/?access_token=9f8e7d6c5b4a39281706f5e4d3c2b1a0aa")
                .findings
                .len(),
            1
        );
    }

    mod robustness {
        use super::*;
        use proptest::prelude::*;

        fn pieces() -> impl Strategy<Value = String> {
            let piece = proptest::sample::select(vec![
                "passport ",
                "Passport No. ",
                "acct ",
                "routing ",
                "BSN ",
                "Aadhaar ",
                "CPF ",
                "Steuer-ID ",
                "SIN ",
                "X1234567",
                "12345678Z",
                "111222333",
                "021000021",
                "2345 6789 0127",
                "529.982.247-25",
                "ana@example.com",
                "+1 415 555 0132",
                "4111 1111 1111 1111",
                " ",
                ": ",
                "n° ",
                "é",
                "护照",
                "0",
                "9",
                "-",
                ".",
            ]);
            // Values in text are separated from what surrounds them.
            proptest::collection::vec(piece, 0..16).prop_map(|v| v.join(" ; "))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_text_never_panics(s in any::<String>()) {
                let _ = r().redact(&s);
            }

            #[test]
            fn redacting_twice_changes_nothing_more(s in pieces(), key in any::<[u8; 32]>()) {
                let r = Redactor::new(key);
                let once = r.redact(&s);
                let twice = r.redact(&once.text);
                prop_assert!(twice.findings.is_empty(), "{:?} -> {:?} -> {:?}", s, once.text, twice.text);
            }
        }
    }

    #[test]
    fn checksums_agree_with_known_values() {
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(!iban_valid("GB82WEST12345698765433"));
        assert!(luhn(&[4, 0, 1, 2, 8, 8, 8, 8, 8, 8, 8, 8, 1, 8, 8, 1]));
    }
}
