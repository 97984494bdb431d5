//! The last word of the text streamed so far, held back until what follows shows it whole.
//!
//! A stream cut inside a word ("…the wizar") left the client with half a word, and the next
//! provider had to go on from there: a model asked to continue re-sends the word, often after a
//! space ("wizar" + " wizard"), which the seam cannot tell from the next real word beginning
//! like the last ("int" + " interval"), so the user saw it twice. Held back, the half word
//! never reaches the client: the answer so far ends where a word does ("…the"), and the next
//! provider writes the word itself. The price is one token of delay on the text, which nobody
//! sees; the first text of an attempt is not held, so the time to first token is the
//! provider's.
//!
//! Only a run of letters and digits of a script that puts spaces between words (below U+2E80,
//! where CJK begins: there every character is a word), with the spaces before it, and only up to
//! [`MAX_HELD_WORD`] characters: a longer run (base64, a long identifier, a URL) goes out as it
//! comes, and the seam handles a cut in it as before.

use mythos_protocol::Text;

/// The longest word held back; the seam's cut-word length too.
pub const MAX_HELD_WORD: usize = super::seam::MAX_CUT_WORD;

/// Holds the end of the text while it may be half a word.
#[derive(Debug, Default)]
pub struct WordHold {
    held: Text,
    /// Some text went out already (the first is never held: see the module doc).
    started: bool,
}

impl WordHold {
    /// What of `text` (after what was held) goes out now. Tokens mostly begin with their
    /// space, so the usual case moves the held word out and `text` in, copying nothing.
    pub fn push(&mut self, mut text: Text) -> Text {
        if text.is_empty() || !std::mem::replace(&mut self.started, true) {
            return text;
        }
        let cut = unfinished_from(&text);
        if cut == text.len() {
            // It ends where a word does: everything goes.
            return self.join(text);
        }
        if cut > 0 {
            let rest = Text::from(&text[cut..]);
            text.truncate(cut);
            let out = self.join(text);
            self.held = rest;
            return out;
        }
        if !text.starts_with(in_word) || self.held.is_empty() {
            // A new word (after its space): the held one is whole.
            return std::mem::replace(&mut self.held, text);
        }
        // The held word goes on, unless it is too long to be one.
        if self.held.len() + text.len() > MAX_HELD_BYTES {
            return self.join(text);
        }
        self.held.push_str(&text);
        Text::default()
    }

    /// Everything held: the answer goes on with something else, or is complete.
    pub fn flush(&mut self) -> Text {
        std::mem::take(&mut self.held)
    }

    /// What is held, then `text`.
    fn join(&mut self, text: Text) -> Text {
        if self.held.is_empty() {
            return text;
        }
        let mut all = std::mem::take(&mut self.held);
        all.push_str(&text);
        all
    }
}

/// The most a held word may take, spaces before it included (32 letters of up to two bytes).
const MAX_HELD_BYTES: usize = 2 * MAX_HELD_WORD;

/// A character of a word that may go on in the next token.
fn in_word(c: char) -> bool {
    (c.is_alphanumeric() && (c as u32) < 0x2E80) || matches!(c, '_' | '\'' | '’')
}

/// Where the word `text` ends in begins, with the spaces before it; `text.len()` when it does
/// not end in one that may go on (or in one too long to hold).
fn unfinished_from(text: &str) -> usize {
    // ASCII first, a byte at a time: most tokens are; a letter beyond it takes the long way.
    let bytes = text.as_bytes();
    let mut start = bytes.len();
    while start > 0 && bytes.len() - start <= MAX_HELD_WORD {
        let b = bytes[start - 1];
        if b >= 0x80 {
            return unfinished_from_chars(text);
        }
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'\'') {
            break;
        }
        start -= 1;
    }
    if start == bytes.len() || bytes.len() - start > MAX_HELD_WORD {
        return bytes.len();
    }
    text[..start].trim_end_matches([' ', '\t']).len()
}

/// [`unfinished_from`] for text whose last word is not all ASCII.
fn unfinished_from_chars(text: &str) -> usize {
    let mut start = text.len();
    for (n, (i, c)) in text.char_indices().rev().enumerate() {
        if !in_word(c) {
            break;
        }
        if n == MAX_HELD_WORD {
            return text.len();
        }
        start = i;
    }
    if start == text.len() {
        return start;
    }
    text[..start].trim_end_matches([' ', '\t']).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each push lets out, then what the flush does.
    fn run(pieces: &[&str]) -> (Vec<String>, String) {
        let mut h = WordHold::default();
        let out = pieces
            .iter()
            .map(|p| h.push((*p).into()).to_string())
            .collect();
        (out, h.flush().to_string())
    }

    #[test]
    fn the_last_word_waits_for_what_follows_it() {
        let (out, rest) = run(&["The", " quick bro", "wn fox", " jumps ov", "er."]);
        assert_eq!(out, ["The", " quick", " brown", " fox jumps", " over."]);
        assert_eq!(rest, "");
        // Cut now, the client has a whole word at the end.
        let (out, rest) = run(&["Hi.", " The wizar"]);
        assert_eq!(out, ["Hi.", " The"]);
        assert_eq!(rest, " wizar");
        let (out, _) = run(&["Hi.", " The wizar", "d18 is"]);
        assert_eq!(out.concat(), "Hi. The wizard18");
    }

    #[test]
    fn what_is_not_a_word_of_a_spaced_script_goes_out_at_once() {
        // Punctuation, a line break, CJK, a run longer than a word.
        for text in ["Hello, world.", "a list:\n", "用中文写的句子", "f(x)"] {
            let (out, rest) = run(&["A", text]);
            assert_eq!((out[1].as_str(), rest.as_str()), (text, ""), "{text:?}");
        }
        let long = "x".repeat(MAX_HELD_WORD + 1);
        let (out, _) = run(&["A", &format!(" {long}")]);
        assert_eq!(out[1], format!(" {long}"));
        // Accented letters, digits, apostrophes and snake_case are words.
        for word in ["déjà", "x86_64", "don't", "l’été", "Übergrößen"] {
            let (out, rest) = run(&["A", &format!(" is {word}")]);
            assert_eq!((out[1].as_str(), rest.trim()), (" is", word), "{word:?}");
        }
    }

    #[test]
    fn a_word_in_several_tokens_waits_whole_and_a_long_one_goes() {
        let (out, rest) = run(&["A", " extra", "ordin", "ary", " day"]);
        assert_eq!(out, ["A", "", "", "", " extraordinary"]);
        assert_eq!(rest, " day");
        let piece = "x".repeat(20);
        let (out, _) = run(&["A", " ", &piece, &piece, &piece, " end"]);
        assert_eq!(out.concat().len(), 1 + 1 + 60, "{out:?}");
    }

    #[test]
    fn nothing_is_lost_or_reordered() {
        let pieces = [
            "Das", " ist ein", " Eintrag", " für", " 2026", ", ok", "ay", "?\n", "日本",
        ];
        let mut h = WordHold::default();
        let mut seen = String::new();
        for p in pieces {
            seen.push_str(&h.push(p.into()));
        }
        seen.push_str(&h.flush());
        assert_eq!(seen, pieces.concat());
    }
}
