//! Markdown for the terminal: answers wrapped at word boundaries to the terminal's width,
//! headings, lists, quotes and emphasis styled, fenced code highlighted by language. Streaming
//! stays token by token: the line being written is shown as it arrives and re-drawn, rendered,
//! once it is complete.
//!
//! With colour off (`NO_COLOR`, or stdout not a terminal) the structure stays (wrapping,
//! bullets) and the markers stay too, so emphasis keeps its meaning.

use std::io::{self, Write};

use super::Style;

/// Renders whole lines, keeping the state that spans lines (inside a code fence or not).
#[derive(Debug, Clone)]
pub struct LineRenderer {
    width: usize,
    style: Style,
    /// Inside a fenced code block: its fence (```/~~~) and language.
    code: Option<(String, String)>,
}

impl LineRenderer {
    /// Lines wrapped at `width` columns (at least 20), styled with `style`.
    pub fn new(width: usize, style: Style) -> Self {
        LineRenderer {
            width: width.max(20),
            style,
            code: None,
        }
    }

    /// One complete line (without its newline), rendered: one or more terminal rows joined
    /// by `\n`.
    pub fn render(&mut self, line: &str) -> String {
        let s = self.style;
        let trimmed = line.trim_start();
        if let Some((fence, lang)) = &self.code {
            if trimmed.starts_with(fence.as_str()) && trimmed.trim_end() == fence.as_str() {
                let fence = fence.clone();
                let _ = lang;
                self.code = None;
                return s.dim(&fence);
            }
            // Code is never re-wrapped: the terminal folds a long line, and a copy is exact.
            let lang = lang.clone();
            return highlight(line, &lang, s);
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            let fence = trimmed[..3].to_string();
            let lang = trimmed[3..].trim().to_ascii_lowercase();
            self.code = Some((fence, lang));
            return s.dim(trimmed.trim_end());
        }
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let text = inline(trimmed[hashes..].trim(), s);
            let marker = if s.color {
                String::new()
            } else {
                format!("{} ", &trimmed[..hashes])
            };
            return wrap(&s.bold(&format!("{marker}{text}")), self.width, "");
        }
        if !trimmed.is_empty()
            && trimmed
                .chars()
                .all(|c| c == '-' || c == '*' || c == '_' || c == ' ')
            && trimmed.chars().filter(|c| !c.is_whitespace()).count() >= 3
            && trimmed
                .chars()
                .filter(|c| !c.is_whitespace())
                .all(|c| c == trimmed.chars().next().unwrap_or('-'))
        {
            return s.dim(&"─".repeat(self.width.min(60)));
        }
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(rest) = trimmed
            .strip_prefix("> ")
            .or_else(|| (trimmed == ">").then_some(""))
        {
            let bar = s.dim("│ ");
            return wrap(&inline(rest, s), self.width.saturating_sub(2), "")
                .lines()
                .map(|l| format!("{indent}{bar}{l}"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        for bullet in ["- ", "* ", "+ "] {
            if let Some(rest) = trimmed.strip_prefix(bullet) {
                let first = format!("{indent}• ");
                let hang = " ".repeat(indent.chars().count() + 2);
                return hanging(&inline(rest, s), self.width, &first, &hang);
            }
        }
        let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && trimmed[digits..].starts_with(". ") {
            let first = format!("{indent}{}", &trimmed[..digits + 2]);
            let hang = " ".repeat(first.chars().count());
            return hanging(
                &inline(&trimmed[digits + 2..], s),
                self.width,
                &first,
                &hang,
            );
        }
        wrap(&inline(line, s), self.width, "")
    }
}

/// Inline emphasis: `code`, **bold**, *em* / _em_. Markers are dropped when styled.
fn inline(text: &str, s: Style) -> String {
    if !s.color {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let find = |from: usize, pat: &[char]| -> Option<usize> {
        (from..chars.len().saturating_sub(pat.len() - 1)).find(|&j| chars[j..j + pat.len()] == *pat)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '`' {
            if let Some(end) = find(i + 1, &['`']) {
                let code: String = chars[i + 1..end].iter().collect();
                out.push_str(&s.cyan(&code));
                i = end + 1;
                continue;
            }
        }
        if c == '*' && chars.get(i + 1) == Some(&'*') {
            if let Some(end) = find(i + 2, &['*', '*']).filter(|&e| e > i + 2) {
                let inner: String = chars[i + 2..end].iter().collect();
                out.push_str(&s.bold(&inner));
                i = end + 2;
                continue;
            }
        }
        if (c == '*' || c == '_')
            && chars.get(i + 1).is_some_and(|n| !n.is_whitespace())
            && (i == 0 || !chars[i - 1].is_alphanumeric())
        {
            if let Some(end) =
                find(i + 1, &[c]).filter(|&e| e > i + 1 && !chars[e - 1].is_whitespace())
            {
                let inner: String = chars[i + 1..end].iter().collect();
                out.push_str(&format!("\x1b[3m{inner}\x1b[23m"));
                i = end + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Columns `s` takes on screen: a wide character (CJK, most emoji) two, a combining mark
/// none, a tab up to the next multiple of 8, an escape sequence none.
pub fn visible_width(s: &str) -> usize {
    use unicode_width::UnicodeWidthStr;
    // Text between escapes and tabs is measured as a string, so that a sequence (an emoji
    // joined with ZWJ) counts once, not once per code point.
    let mut n = 0;
    let mut run = String::new();
    let mut esc = false;
    for c in s.chars() {
        if esc {
            if c.is_ascii_alphabetic() {
                esc = false;
            }
        } else if c == '\x1b' || c == '\t' {
            n += run.width();
            run.clear();
            if c == '\t' {
                n += 8 - n % 8;
            } else {
                esc = true;
            }
        } else {
            run.push(c);
        }
    }
    n + run.width()
}

/// Wrap at word boundaries to `width`, each row after the first starting with `hang`.
fn wrap(text: &str, width: usize, hang: &str) -> String {
    hanging(text, width, "", hang)
}

fn hanging(text: &str, width: usize, first: &str, hang: &str) -> String {
    let mut rows: Vec<String> = Vec::new();
    let mut row = first.to_string();
    let mut col = visible_width(first);
    let mut empty = true;
    for word in text.split(' ') {
        let w = visible_width(word);
        if !empty && col + 1 + w > width {
            rows.push(std::mem::take(&mut row));
            row.push_str(hang);
            col = visible_width(hang);
            empty = true;
        }
        if !empty {
            row.push(' ');
            col += 1;
        }
        row.push_str(word);
        col += w;
        empty = false;
    }
    rows.push(row);
    rows.join("\n")
}

/// Keywords of the languages a coding answer most often shows.
fn keywords(lang: &str) -> (&'static [&'static str], &'static str) {
    match lang {
        "rust" | "rs" => (
            &[
                "as", "async", "await", "break", "const", "continue", "crate", "else", "enum",
                "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
                "pub", "ref", "return", "self", "Self", "static", "struct", "trait", "type",
                "unsafe", "use", "where", "while", "true", "false", "None", "Some", "Ok", "Err",
            ],
            "//",
        ),
        "python" | "py" => (
            &[
                "and", "as", "assert", "async", "await", "break", "class", "continue", "def",
                "del", "elif", "else", "except", "False", "finally", "for", "from", "if", "import",
                "in", "is", "lambda", "None", "not", "or", "pass", "raise", "return", "True",
                "try", "while", "with", "yield",
            ],
            "#",
        ),
        "javascript" | "js" | "typescript" | "ts" | "tsx" | "jsx" => (
            &[
                "async",
                "await",
                "break",
                "case",
                "catch",
                "class",
                "const",
                "continue",
                "default",
                "else",
                "export",
                "extends",
                "false",
                "for",
                "from",
                "function",
                "if",
                "import",
                "in",
                "instanceof",
                "interface",
                "let",
                "new",
                "null",
                "of",
                "return",
                "switch",
                "this",
                "throw",
                "true",
                "try",
                "type",
                "typeof",
                "undefined",
                "var",
                "while",
            ],
            "//",
        ),
        "go" | "golang" => (
            &[
                "break",
                "case",
                "chan",
                "const",
                "continue",
                "default",
                "defer",
                "else",
                "false",
                "for",
                "func",
                "go",
                "if",
                "import",
                "interface",
                "map",
                "nil",
                "package",
                "range",
                "return",
                "select",
                "struct",
                "switch",
                "true",
                "type",
                "var",
            ],
            "//",
        ),
        "c" | "cpp" | "c++" | "h" | "java" | "kotlin" | "swift" | "csharp" | "cs" => (
            &[
                "break", "case", "class", "const", "continue", "default", "do", "else", "enum",
                "false", "for", "if", "new", "null", "nullptr", "private", "public", "return",
                "static", "struct", "switch", "this", "true", "void", "while",
            ],
            "//",
        ),
        "sh" | "bash" | "shell" | "zsh" | "console" => (
            &[
                "case", "do", "done", "elif", "else", "esac", "export", "fi", "for", "function",
                "if", "in", "local", "return", "then", "while",
            ],
            "#",
        ),
        "toml" | "yaml" | "yml" | "ini" => (&["true", "false"], "#"),
        "json" => (&["true", "false", "null"], "\u{0}"),
        _ => (&[], "\u{0}"),
    }
}

/// One line of code, coloured: keywords, strings, numbers, comments.
fn highlight(line: &str, lang: &str, s: Style) -> String {
    let (words, comment) = keywords(lang);
    if !s.color || (words.is_empty() && comment == "\u{0}") {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 32);
    let mut rest = line;
    while !rest.is_empty() {
        if rest.starts_with(comment) {
            out.push_str(&s.dim(rest));
            break;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if c == '"' || c == '\'' || c == '`' {
            let end = rest[1..]
                .char_indices()
                .scan(false, |escaped, (i, ch)| {
                    let was = *escaped;
                    *escaped = ch == '\\' && !was;
                    Some((i, ch, was))
                })
                .find(|&(_, ch, was)| ch == c && !was)
                .map_or(rest.len(), |(i, _, _)| i + 2);
            out.push_str(&s.green(&rest[..end]));
            rest = &rest[end..];
            continue;
        }
        if c.is_alphanumeric() || c == '_' {
            let end = rest
                .char_indices()
                .find(|&(_, ch)| {
                    !(ch.is_alphanumeric() || ch == '_' || ch == '.' && c.is_ascii_digit())
                })
                .map_or(rest.len(), |(i, _)| i);
            let word = &rest[..end];
            if c.is_ascii_digit() {
                out.push_str(&s.cyan(word));
            } else if words.contains(&word) {
                out.push_str(&s.yellow(word));
            } else {
                out.push_str(word);
            }
            rest = &rest[end..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Streams an answer as Markdown: complete lines rendered, the line in progress shown raw and
/// re-drawn once complete.
pub struct MarkdownStream {
    lines: LineRenderer,
    width: usize,
    /// The line in progress.
    partial: String,
    /// Bytes at the start of `partial` shown for good: a notice was printed below them, so
    /// they were drawn rendered then, and only what came after is re-drawn.
    fixed: usize,
}

impl MarkdownStream {
    /// A stream for a terminal `width` columns wide.
    pub fn new(width: usize, style: Style) -> Self {
        MarkdownStream {
            lines: LineRenderer::new(width, style),
            // The real width: rows are counted against the terminal's columns.
            width: width.max(1),
            partial: String::new(),
            fixed: 0,
        }
    }

    /// Rows the raw partial line takes on screen.
    fn partial_rows(&self) -> usize {
        visible_width(&self.partial[self.fixed..])
            .max(1)
            .div_ceil(self.width)
    }

    /// Erase the raw partial line: back to its first row, clear to the end of the screen.
    fn erase_partial(&self, out: &mut impl Write) -> io::Result<()> {
        let up = self.partial_rows() - 1;
        if up > 0 {
            write!(out, "\r\x1b[{up}A\x1b[J")
        } else {
            write!(out, "\r\x1b[J")
        }
    }

    /// Show `text`.
    pub fn push(&mut self, text: &str, out: &mut impl Write) -> io::Result<()> {
        let mut pieces = text.split('\n').peekable();
        while let Some(piece) = pieces.next() {
            let complete = pieces.peek().is_some();
            if !complete {
                // More of the line in progress: shown as it comes.
                out.write_all(piece.as_bytes())?;
                self.partial.push_str(piece);
                break;
            }
            // What is on screen of this line is the partial so far (not `piece`).
            if self.partial.len() > self.fixed {
                self.erase_partial(out)?;
            }
            self.partial.push_str(piece);
            let line = std::mem::take(&mut self.partial);
            let fixed = std::mem::take(&mut self.fixed);
            // Before the renderer moves on (a code fence opening or closing on this line).
            let mut before = self.lines.clone();
            let rendered = self.lines.render(&line);
            if fixed == 0 {
                out.write_all(rendered.as_bytes())?;
                out.write_all(b"\n")?;
            } else if !line[fixed..].trim().is_empty() {
                // The rest of a line a notice broke: wrapped on its own rows, below the notice.
                out.write_all(before.render(&line[fixed..]).as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()
    }

    /// A notice is about to be printed below the line in progress: draw what there is of it
    /// now, rendered and wrapped (left raw, it would stay folded mid-word at the terminal's
    /// edge), and re-draw only what follows once the line completes. The cursor is left at the
    /// end of the drawn text.
    pub fn detach(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.partial.len() == self.fixed {
            return Ok(());
        }
        self.erase_partial(out)?;
        let shown = self.lines.clone().render(&self.partial[self.fixed..]);
        out.write_all(shown.as_bytes())?;
        self.fixed = self.partial.len();
        Ok(())
    }

    /// The answer is complete: render the last line if it had no newline. Returns whether
    /// the cursor is now mid-line (never: the rendered line ends it).
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.partial.is_empty() {
            self.push("\n", out)?;
        }
        self.lines.code = None;
        Ok(())
    }

    /// Forget the answer in progress (a restart).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.fixed = 0;
        self.lines.code = None;
    }
}

/// The terminal's width in columns (80 when unknown).
pub fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ fills a winsize we own; stdout may not be a terminal (then it
        // fails and the default is used).
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|&c: &usize| c > 0)
        .unwrap_or(80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(md: &str, width: usize) -> String {
        let mut r = LineRenderer::new(width, Style::PLAIN);
        md.lines()
            .map(|l| r.render(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wide characters take two columns, tabs reach the next stop, escapes none: a streamed
    /// line of CJK text is erased over the rows it really took.
    #[test]
    fn widths_are_screen_columns() {
        assert_eq!(visible_width("abc"), 3);
        assert_eq!(visible_width("漢字"), 4);
        assert_eq!(visible_width("a\tb"), 9);
        assert_eq!(visible_width("\x1b[1mhi\x1b[0m"), 2);
        assert_eq!(visible_width("e\u{301}"), 1);
        // A family emoji: one sequence, two columns.
        assert_eq!(
            visible_width("\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}"),
            2
        );
        let mut m = MarkdownStream::new(80, Style::PLAIN);
        m.partial = "字".repeat(50);
        assert_eq!(m.partial_rows(), 2);
    }

    #[test]
    fn wraps_at_word_boundaries_with_hanging_list_indents() {
        let text =
            "mythos sends each request to the healthiest provider and retries brief failures";
        let out = plain(text, 30);
        for row in out.lines() {
            assert!(visible_width(row) <= 30, "{row:?}");
        }
        assert_eq!(out.replace('\n', " "), text);
        let out = plain(
            "- one two three four five six seven eight nine ten eleven",
            24,
        );
        let rows: Vec<&str> = out.lines().collect();
        assert!(rows[0].starts_with("• one"), "{out}");
        assert!(
            rows[1].starts_with("  ") && !rows[1].starts_with("   "),
            "{out}"
        );
        assert!(plain("12. step", 40).starts_with("12. step"));
    }

    #[test]
    fn code_blocks_are_kept_exactly_and_highlighted() {
        let md = "```rust\nfn main() { let x = \"hi\"; } // done\n```\nafter";
        // Never wrapped, even when wider than the terminal.
        let out = plain(md, 20);
        assert!(
            out.contains("fn main() { let x = \"hi\"; } // done"),
            "{out}"
        );
        let mut r = LineRenderer::new(80, Style::COLOR);
        r.render("```rust");
        let line = r.render("fn main() { let x = \"hi\"; } // done");
        assert!(line.contains("\x1b[33mfn\x1b[0m"), "keyword: {line:?}");
        assert!(line.contains("\x1b[32m\"hi\"\x1b[0m"), "string: {line:?}");
        assert!(line.contains("\x1b[2m// done\x1b[0m"), "comment: {line:?}");
        r.render("```");
        // Out of the block: `fn` is a word again.
        assert_eq!(r.render("fn"), "fn");
    }

    #[test]
    fn emphasis_and_no_color() {
        let mut r = LineRenderer::new(80, Style::COLOR);
        let out = r.render("a **bold** and *em* and `code` and snake_case_name");
        assert!(out.contains("\x1b[1mbold\x1b[0m"), "{out:?}");
        assert!(out.contains("\x1b[3mem\x1b[23m"), "{out:?}");
        assert!(out.contains("\x1b[36mcode\x1b[0m"), "{out:?}");
        assert!(out.contains("snake_case_name"), "{out:?}");
        // NO_COLOR: no escape codes, the markers stay so the meaning does.
        let out = plain("# Title\na **bold** word", 80);
        assert_eq!(out, "# Title\na **bold** word");
    }

    #[test]
    fn streaming_redraws_the_line_in_progress_once_complete() {
        let mut m = MarkdownStream::new(80, Style::COLOR);
        let mut out = Vec::new();
        for piece in ["# Hea", "ding\nplain ", "text", "\n"] {
            m.push(piece, &mut out).unwrap();
        }
        let s = String::from_utf8(out).unwrap();
        // The raw heading was shown, then erased and drawn bold.
        assert!(s.starts_with("# Hea"), "{s:?}");
        assert!(s.contains("# Hea\r\x1b[J\x1b[1mHeading\x1b[0m\n"), "{s:?}");
        assert!(s.ends_with("plain text\r\x1b[Jplain text\n"), "{s:?}");
        // A line wider than the terminal is erased from its first row.
        let mut m = MarkdownStream::new(20, Style::COLOR);
        let mut out = Vec::new();
        m.push(&"word ".repeat(9), &mut out).unwrap();
        m.finish(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\x1b[2A\x1b[J"), "{s:?}");
    }
}
