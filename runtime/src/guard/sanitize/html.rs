//! The HTML stage of the sanitizer: markup is split into the text a reader sees and
//! the text it hides (invisible styles, tiny or white text, classes a `<style>` block
//! hides, comments, alt and other attribute text), and HTML character references are
//! decoded.

pub(super) fn looks_like_html(text: &str) -> bool {
    if !text.contains('<') {
        return false;
    }
    static TAG: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = TAG.get_or_init(|| {
        regex::Regex::new(r"(?i)<(?:!--|/?(?:html|body|head|div|span|p|a|img|table|td|tr|th|br|font|style|meta|section|ul|ol|li|h[1-6]|strong|em|b|i|u|center|small|footer|header|article|blockquote|pre|code)\b)")
            .expect("the constant tag pattern compiles")
    });
    re.find_iter(text).take(2).count() >= 2
}

pub(super) struct HtmlText {
    pub(super) visible: String,
    pub(super) hidden: Vec<String>,
    pub(super) comments: Vec<String>,
    pub(super) alts: Vec<String>,
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];
const BLOCK: &[&str] = &[
    "p",
    "div",
    "br",
    "tr",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "blockquote",
    "pre",
    "ul",
    "ol",
];

fn hidden_style() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(concat!(
            r"display\s*:\s*none|visibility\s*:\s*hidden|opacity\s*:\s*0(?:\.0+)?\s*(?:;|$|!|\x22|')",
            r"|font-size\s*:\s*0*(?:\.\d+|[01](?:\.\d+)?)\s*(?:px|pt|em|rem|%)?\s*(?:;|$|!|\x22|')",
            r"|(?:^|[\s;\x22'])(?:max-)?(?:height|width)\s*:\s*0(?:px)?\s*(?:;|$|!|\x22|')",
            r"|text-indent\s*:\s*-\d{3,}|(?:left|top)\s*:\s*-\d{3,}|clip\s*:\s*rect\(\s*0",
            r"|aria-hidden\s*=\s*[\x22']?true|(?:^|\s)hidden(?:\s|=|$)",
        ))
        .expect("the constant style pattern compiles")
    })
}

fn white_text() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r"(?:^|[^-])color\s*:\s*(?:#fff\b|#ffffff\b|white\b|rgb\(\s*255\s*,\s*255\s*,\s*255\s*\)|#fefefe\b|#fdfdfd\b)|<font[^>]*color\s*=\s*[\x22']?(?:#fff\b|#ffffff\b|white\b)",
        )
        .expect("the constant colour pattern compiles")
    })
}

fn dark_background() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"background(?:-color)?\s*:\s*(?:#[0-7][0-9a-f]{2}\b|#[0-7][0-9a-f]{5}\b|black\b|navy\b|rgb\(\s*[0-9]{1,2}\s*,)")
            .expect("the constant colour pattern compiles")
    })
}

fn attribute(attrs: &str, name: &str) -> Option<String> {
    let lower = attrs.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(name) {
        let at = from + pos;
        from = at + name.len();
        let before_ok = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let offset = attrs.len() - rest.len() + 1;
        let value = attrs[offset..].trim_start();
        let (quote, body) = match value.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &value[1..]),
            _ => (None, value),
        };
        let end = match quote {
            Some(q) => body.find(q).unwrap_or(body.len()),
            None => body
                .find(|c: char| c.is_whitespace() || c == '>')
                .unwrap_or(body.len()),
        };
        return Some(decode_entities(&body[..end]));
    }
    None
}

/// An open element: (tag, hidden, skipped).
type Open = (String, bool, bool);

/// Splits HTML into visible text and what markup hides.
pub(super) fn html_text(html: &str) -> HtmlText {
    static TAG: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = TAG.get_or_init(|| {
        regex::Regex::new(
            r#"(?s)<!--(.*?)(?:-->|$)|<(/?)([A-Za-z][A-Za-z0-9]*)((?:[^>"']|"[^"]*"|'[^']*')*)>"#,
        )
        .expect("the constant tag pattern compiles")
    });
    let mut out = HtmlText {
        visible: String::new(),
        hidden: Vec::new(),
        comments: Vec::new(),
        alts: Vec::new(),
    };
    let hidden_classes = hidden_classes(html);
    // (tag, hidden, skipped) per open element.
    let mut stack: Vec<Open> = Vec::new();
    let mut hidden_buf = String::new();
    let mut last = 0;
    for caps in re.captures_iter(html) {
        let Some(m) = caps.get(0) else { continue };
        push_text(&html[last..m.start()], &stack, &mut out, &mut hidden_buf);
        last = m.end();
        if let Some(comment) = caps.get(1) {
            push_comment(comment.as_str(), &mut out);
            continue;
        }
        let closing = caps.get(2).is_some_and(|c| !c.as_str().is_empty());
        let name = caps
            .get(3)
            .map(|n| n.as_str().to_ascii_lowercase())
            .unwrap_or_default();
        let attrs = caps.get(4).map_or("", |a| a.as_str());
        if closing {
            close_element(&name, &mut stack, &mut out, &mut hidden_buf);
            if BLOCK.contains(&name.as_str()) {
                out.visible.push('\n');
            }
            continue;
        }
        push_attribute_text(attrs, &mut out);
        if BLOCK.contains(&name.as_str()) {
            out.visible.push('\n');
        }
        if VOID.contains(&name.as_str()) || attrs.trim_end().ends_with('/') {
            continue;
        }
        let hidden = hides(&name, attrs, &hidden_classes);
        let skipped = matches!(name.as_str(), "script" | "style" | "head" | "title");
        if stack.len() < 256 {
            stack.push((name, hidden, skipped));
        }
    }
    push_text(&html[last..], &stack, &mut out, &mut hidden_buf);
    flush_hidden(&mut hidden_buf, &mut out);
    out.visible = out
        .visible
        .lines()
        .map(collapse)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    out
}

/// Adds text between tags to the visible text, or to the hidden text when an open
/// element hides it; nothing when an open element is skipped (scripts, styles).
fn push_text(text: &str, stack: &[Open], out: &mut HtmlText, hidden_buf: &mut String) {
    if stack.iter().any(|e| e.2) {
        return;
    }
    let text = decode_entities(text);
    if stack.iter().any(|e| e.1) {
        hidden_buf.push_str(&text);
    } else {
        out.visible.push_str(&text);
    }
}

/// Keeps a comment's text, whitespace collapsed, unless it is empty.
fn push_comment(comment: &str, out: &mut HtmlText) {
    let t = collapse(comment);
    if !t.is_empty() {
        out.comments.push(t);
    }
}

/// Closes the innermost open element named `name` (and those inside it); when that
/// ends the hidden part, the hidden text gathered so far becomes one hidden item.
fn close_element(name: &str, stack: &mut Vec<Open>, out: &mut HtmlText, hidden_buf: &mut String) {
    if let Some(pos) = stack.iter().rposition(|e| e.0 == name) {
        let was_hidden = stack.iter().any(|e| e.1);
        stack.truncate(pos);
        if was_hidden && !stack.iter().any(|e| e.1) {
            flush_hidden(hidden_buf, out);
        }
    }
}

/// Moves the hidden text gathered so far, whitespace collapsed, into the hidden items
/// (unless it is empty).
fn flush_hidden(hidden_buf: &mut String, out: &mut HtmlText) {
    let t = collapse(hidden_buf);
    if !t.is_empty() {
        out.hidden.push(t);
    }
    hidden_buf.clear();
}

/// Keeps the text of an opening tag's attributes that a reader or a model may be
/// shown (alt text, titles, labels, values).
fn push_attribute_text(attrs: &str, out: &mut HtmlText) {
    for key in [
        "alt",
        "title",
        "content",
        "aria-label",
        "placeholder",
        "value",
    ] {
        if let Some(v) = attribute(attrs, key) {
            let v = collapse(&v);
            if !v.is_empty() {
                out.alts.push(v);
            }
        }
    }
}

/// Whether an element hides its content: an invisible style, white text (not on a
/// dark background), a class a `<style>` block hides, or `template` and `noscript`.
fn hides(name: &str, attrs: &str, hidden_classes: &[String]) -> bool {
    let lower = attrs.to_ascii_lowercase();
    let white = white_text().is_match(&lower) && !dark_background().is_match(&lower);
    let white_font = name == "font" && white_text().is_match(&format!("<font{lower}"));
    let by_class = !hidden_classes.is_empty()
        && attribute(attrs, "class").is_some_and(|classes| {
            classes
                .split_whitespace()
                .any(|c| hidden_classes.iter().any(|h| h == c))
        });
    hidden_style().is_match(&lower)
        || white
        || white_font
        || by_class
        || matches!(name, "template" | "noscript")
}

/// Classes that a `<style>` block of the document hides.
fn hidden_classes(html: &str) -> Vec<String> {
    static STYLE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static RULE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    if !html.contains("<style") && !html.contains("<STYLE") {
        return Vec::new();
    }
    let style = STYLE.get_or_init(|| {
        regex::Regex::new(r"(?is)<style[^>]*>(.*?)</style>")
            .expect("the constant style pattern compiles")
    });
    let rule = RULE.get_or_init(|| {
        regex::Regex::new(r"((?:\.[A-Za-z0-9_-]+\s*,?\s*)+)\{([^}]*)\}")
            .expect("the constant rule pattern compiles")
    });
    let mut out = Vec::new();
    for block in style.captures_iter(html) {
        for r in rule.captures_iter(&block[1]) {
            let body = format!("{};", r[2].to_ascii_lowercase());
            if hidden_style().is_match(&body) || white_text().is_match(&body) {
                out.extend(
                    r[1].split([',', ' ', '.'])
                        .filter(|c| !c.trim().is_empty())
                        .map(|c| c.trim().to_string()),
                );
            }
        }
    }
    out
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes HTML character references (numeric and the common named ones).
pub(crate) fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let end = rest.bytes().take(12).position(|b| b == b';');
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = if let Some(num) = name.strip_prefix('#') {
                let v = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse().ok(),
                };
                v.and_then(char::from_u32)
            } else {
                match name {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "nbsp" => Some(' '),
                    "shy" | "zwj" | "zwnj" => Some('\u{200B}'),
                    _ => None,
                }
            };
            c.map(|c| (c, end + 1))
        });
        match decoded {
            Some(('\u{200B}', len)) => rest = &rest[len..],
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
