//! The Unicode stage of the sanitizer: invisible characters (zero-width, bidi
//! controls, tag characters, variation selectors) are removed and reported, tag
//! characters decoded, and the words that hold non-ASCII characters are normalized
//! (NFKC) and folded to ASCII where they mix Latin with look-alike letters.

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};
use unicode_script::{Script, UnicodeScript};

use super::Collector;

/// Whether a character is invisible or reorders text.
fn invisible_kind(c: char) -> Option<&'static str> {
    match c {
        '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' => {
            Some("zero_width")
        }
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' => {
            Some("zero_width")
        }
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => Some("bidi_control"),
        '\u{E0000}'..='\u{E007F}' => Some("tag_characters"),
        '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' => Some("variation_selector"),
        '\u{2065}' | '\u{FFF0}'..='\u{FFF8}' => Some("zero_width"),
        _ => None,
    }
}

/// Removes invisible characters and reports them (tag characters are decoded), then
/// normalizes and folds the words that hold non-ASCII characters. When zero-width
/// characters were removed, `spaced` receives the text with each read as a space.
pub(super) fn normalize_unicode(
    text: &str,
    c: &mut Collector,
    spaced: &mut Option<String>,
) -> String {
    let stripped = strip_invisible(text);
    if !stripped.with_spaces.is_empty() {
        *spaced = Some(stripped.with_spaces);
    }
    let zero_width = stripped.zero_width;
    if zero_width >= 3 || stripped.inside_word {
        c.add(
            "zero_width",
            25,
            &format!("{zero_width} zero-width characters removed"),
        );
    }
    let bidi = stripped.bidi;
    if bidi > 0 {
        c.add(
            "bidi_control",
            30,
            &format!("{bidi} bidi control characters removed"),
        );
    }
    let tags = stripped.tags;
    if !tags.is_empty() {
        c.add("tag_characters", 50, &tags);
        c.decoded.push(tags);
    }
    normalize_islands(&stripped.text, c)
}

/// A text with its invisible characters removed, and what was removed.
struct Stripped {
    /// The text without them.
    text: String,
    /// The text with zero-width characters read as spaces; empty when there were none.
    with_spaces: String,
    /// How many zero-width characters were removed (a leading byte-order mark aside).
    zero_width: usize,
    /// Whether one of them stood between two letters or digits.
    inside_word: bool,
    /// How many bidi control characters were removed.
    bidi: usize,
    /// The ASCII that tag characters encode.
    tags: String,
}

impl Stripped {
    /// Keeps visible text.
    fn keep(&mut self, visible: &str) {
        self.text.push_str(visible);
        if !self.with_spaces.is_empty() {
            self.with_spaces.push_str(visible);
        }
    }

    /// Removes a zero-width character, read as a space; `after` is the text that
    /// follows it.
    fn remove_zero_width(&mut self, after: &str) {
        if self.with_spaces.is_empty() {
            self.with_spaces.push_str(&self.text);
        }
        self.with_spaces.push(' ');
        self.zero_width += 1;
        let prev_alnum = self
            .text
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric);
        if prev_alnum && after.chars().next().is_some_and(char::is_alphanumeric) {
            self.inside_word = true;
        }
    }

    /// Removes a tag character, keeping the ASCII it encodes.
    fn tag(&mut self, ch: char) {
        let v = ch as u32 - 0xE0000;
        if (0x20..0x7F).contains(&v) {
            self.tags.push(char::from(v as u8));
        }
    }
}

/// Removes zero-width, bidi-control, tag and other invisible characters.
fn strip_invisible(text: &str) -> Stripped {
    let bytes = text.as_bytes();
    let mut s = Stripped {
        text: String::with_capacity(text.len()),
        with_spaces: String::new(),
        zero_width: 0,
        inside_word: false,
        bidi: 0,
        tags: String::new(),
    };
    let mut i = 0;
    while i < bytes.len() {
        // ASCII runs are copied as they are: nothing in them is invisible.
        let run = bytes[i..]
            .iter()
            .position(|b| !b.is_ascii())
            .unwrap_or(bytes.len() - i);
        if run > 0 {
            s.keep(&text[i..i + run]);
            i += run;
            continue;
        }
        let Some(ch) = text[i..].chars().next() else {
            break;
        };
        let next = i + ch.len_utf8();
        match invisible_kind(ch) {
            Some("zero_width") => {
                // A byte-order mark at the very start is an encoding artifact.
                if !(i == 0 && ch == '\u{FEFF}') {
                    s.remove_zero_width(&text[next..]);
                }
            }
            Some("bidi_control") => s.bidi += 1,
            Some("tag_characters") => s.tag(ch),
            Some(_) => {}
            None => s.keep(&text[i..next]),
        }
        i = next;
    }
    s
}

/// NFKC and mixed-script folding, applied only to the words that hold non-ASCII
/// characters (each with the character before it, which a combining mark may join):
/// ASCII text is already in NFKC and has no look-alikes to fold.
fn normalize_islands(text: &str, c: &mut Collector) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let Some(off) = bytes[i..].iter().position(|b| !b.is_ascii()) else {
            break;
        };
        let p = i + off;
        // Back to the start of the word, and one character more.
        let mut start = p;
        while start > copied && bytes[start - 1].is_ascii_alphanumeric() && p - start < 64 {
            start -= 1;
        }
        if start > copied {
            start -= 1;
        }
        let mut end = p;
        while end < bytes.len() && (!bytes[end].is_ascii() || bytes[end].is_ascii_alphanumeric()) {
            end += 1;
        }
        out.push_str(&text[copied..start]);
        let island = &text[start..end];
        let normalized = match is_nfkc_quick(island.chars()) {
            IsNormalized::Yes => std::borrow::Cow::Borrowed(island),
            _ => std::borrow::Cow::Owned(island.nfkc().collect::<String>()),
        };
        out.push_str(&fold_mixed_script(&normalized, c));
        copied = end;
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Scripts whose letters are commonly passed off as Latin.
fn lookalike_script(s: Script) -> bool {
    matches!(
        s,
        Script::Cyrillic | Script::Greek | Script::Armenian | Script::Cherokee | Script::Coptic
    )
}

/// Folds words that mix Latin with look-alike letters of another script to ASCII.
fn fold_mixed_script(text: &str, c: &mut Collector) -> String {
    let mut out = String::with_capacity(text.len());
    let mut folded_words: Vec<String> = Vec::new();
    let mut word_start = 0usize;
    let mut in_word = false;
    let bytes_end = text.len();
    let mut flush = |start: usize, end: usize, out: &mut String| {
        let word = &text[start..end];
        if word.is_ascii() {
            out.push_str(word);
            return;
        }
        let mut latin = false;
        let mut other = false;
        for ch in word.chars() {
            let s = ch.script();
            if s == Script::Latin {
                latin = true;
            } else if lookalike_script(s) {
                other = true;
            }
        }
        if !(latin && other) {
            out.push_str(word);
            return;
        }
        let mut folded = String::with_capacity(word.len());
        for ch in word.chars() {
            if ch.is_ascii() || !lookalike_script(ch.script()) {
                folded.push(ch);
                continue;
            }
            let skeleton: String =
                unicode_security::skeleton(ch.encode_utf8(&mut [0; 4])).collect();
            let mut sk = skeleton.chars();
            match (sk.next(), sk.next()) {
                (Some(a), None) if a.is_ascii_alphabetic() => folded.push(if ch.is_lowercase() {
                    a.to_ascii_lowercase()
                } else {
                    a
                }),
                _ => folded.push(ch),
            }
        }
        if folded != word {
            folded_words.push(format!("{word} → {folded}"));
        }
        out.push_str(&folded);
    };
    for (i, ch) in text.char_indices() {
        let w = ch.is_alphanumeric();
        if w && !in_word {
            out.push_str(&text[word_start..i]);
            word_start = i;
            in_word = true;
        } else if !w && in_word {
            flush(word_start, i, &mut out);
            word_start = i;
            in_word = false;
        }
    }
    if in_word {
        flush(word_start, bytes_end, &mut out);
    } else {
        out.push_str(&text[word_start..]);
    }
    if !folded_words.is_empty() {
        c.add("homoglyphs", 35, &folded_words.join(", "));
    }
    out
}
