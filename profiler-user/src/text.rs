//! Names that tenants control, made safe for text outputs.
//!
//! Function names come from the symbols of any binary on the host, process
//! and thread names from `prctl(PR_SET_NAME)`, file names from whoever
//! created the file: an unprivileged tenant picks them all. Written raw, an
//! escape sequence in one of them would steer the operator's terminal
//! (colors, cursor moves, window titles) and a newline would split a line
//! of a line-oriented file (folded stacks, logs) or forge one. Every text
//! output (the `record` summary, folded stacks and the flamegraph built
//! from them, log lines, error messages) passes such names through
//! [`escape`]; binary outputs (pprof, OTLP) keep them as they are.

use std::borrow::Cow;
use std::fmt;

/// True for the characters [`escape`] rewrites: control characters (C0,
/// DEL, C1), the Unicode line and paragraph separators, and the
/// bidirectional marks, embeddings, overrides and isolates (which reorder
/// what a terminal shows).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every [unsafe](is_unsafe) character written as a visible
/// escape, so it prints on one line and sends the terminal nothing but
/// text: `\n`, `\r` and `\t`, `\xHH` for the other ASCII control
/// characters (ESC is `\x1b`), `\u{HHHH}` for the others (CSI is
/// `\u{9b}`). Printable text, UTF-8 included, is kept as it is, and so are
/// backslashes, so a name that already reads `\x1b` is not told apart from
/// one holding the byte.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(Escaped(text).to_string())
}

/// Displays a string as [`escape`] writes it, without allocating.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(is_unsafe) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found at a char boundary");
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_ascii() => write!(f, "\\x{:02x}", u32::from(c))?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_kept_as_is() {
        for text in [
            "main",
            "std::vec::Vec<T>::push",
            "héllo wörld ✓ 日本",
            "a\\x1b",
            "",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(escape("evil\n\x1b[31mred"), "evil\\n\\x1b[31mred");
        assert_eq!(escape("a\r\tb\0c\x7f"), "a\\r\\tb\\x00c\\x7f");
        // C1: CSI and NEL; line and paragraph separators; a bidi override.
        assert_eq!(escape("x\u{9b}2J\u{85}"), "x\\u{9b}2J\\u{85}");
        assert_eq!(escape("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        assert_eq!(escape("\u{202e}txt.exe"), "\\u{202e}txt.exe");
        assert_eq!(escape("ü\x1b"), "ü\\x1b");
    }

    #[test]
    fn escaped_text_holds_no_unsafe_character() {
        let all: String = (0..0x3000u32).filter_map(char::from_u32).collect();
        let escaped = escape(&all);
        assert!(!escaped.chars().any(is_unsafe));
        assert_eq!(escaped.lines().count(), 1);
    }
}
