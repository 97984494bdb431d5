//! Streaming an answer: text on stdout as it arrives, notices and thinking on the side stream,
//! a live countdown while a request waits for capacity.

use std::io::{self, IsTerminal, Write};

use mythos_protocol::{RerouteMode, StreamEvent};

use super::{gist, now_unix_ms, printable, queued_notice, reroute_notice, Style};

/// How a [`StreamPrinter`] lays out an answer.
#[derive(Debug, Clone, Copy)]
pub struct PrinterOptions {
    /// Hold the answer back and write it once complete. Used when stdout is not a terminal:
    /// a file or pipe then receives exactly the final answer, even if the daemon restarts it.
    pub buffer_text: bool,
    /// Show thinking deltas (dimmed, on the side stream).
    pub show_thinking: bool,
    /// The text stream and the side stream show up on one screen (both are the same
    /// terminal), so a notice must start on a fresh line of that screen.
    pub same_screen: bool,
    /// Styling of the side stream.
    pub side_style: Style,
    /// The side stream is a terminal: a waiting request's countdown redraws in place.
    pub live: bool,
    /// Render the answer as Markdown for a terminal this wide (`None`: the text as it is).
    pub markdown: Option<usize>,
}

impl PrinterOptions {
    /// The usual layout: answer on stdout, everything else on stderr.
    pub fn for_terminal(show_thinking: bool) -> Self {
        let stdout_tty = io::stdout().is_terminal();
        let stderr_tty = io::stderr().is_terminal();
        // Re-drawing a line in place (a rendered answer, a countdown) takes cursor movements a
        // dumb terminal prints as text: there, the answer streams as it is.
        let redraw = !super::dumb_terminal();
        PrinterOptions {
            buffer_text: !stdout_tty,
            show_thinking,
            same_screen: stdout_tty && stderr_tty,
            side_style: Style::stderr(),
            live: stderr_tty && redraw,
            markdown: (stdout_tty && redraw).then(super::markdown::terminal_width),
        }
    }

    /// The answer as it is, never rendered (`--raw`).
    pub fn raw(mut self, raw: bool) -> Self {
        if raw {
            self.markdown = None;
        }
        self
    }
}

/// Prints one chat stream: answer text to `out` as it arrives (flushed per delta), notices,
/// thinking and footers to `side`.
///
/// Layout of a reroute: the notice gets a line of its own. With [`RerouteMode::Continue`] the
/// text printed so far stands and the answer goes on below the notice (on a shared screen the
/// answer is thus broken by one line there; the text kept in the conversation is unbroken).
/// With [`RerouteMode::Restart`] the notice says that the answer restarts and the new answer is
/// printed in full below it; a held-back (buffered) answer is simply discarded.
pub struct StreamPrinter<O: Write, S: Write> {
    out: O,
    side: S,
    opts: PrinterOptions,
    /// The last byte written to `out` was not a newline.
    out_mid_line: bool,
    /// Thinking text was written to `side` without a final newline.
    side_mid_line: bool,
    /// We broke the answer's line on screen for a notice; the answer has not gone on yet.
    broke_line: bool,
    buffer: String,
    /// A live "waiting for capacity" line is on the side stream, to be cleared before anything
    /// else is shown.
    status_line: bool,
    /// The gist of the last waiting reason shown (plain output shows each one once).
    last_wait: Option<String>,
    /// A wait was shown since the last reroute: the next reroute's failure came before it.
    waited: bool,
    /// The Markdown renderer, when the answer is rendered.
    md: Option<super::markdown::MarkdownStream>,
}

impl<O: Write, S: Write> StreamPrinter<O, S> {
    /// A printer writing the answer to `out` and everything else to `side`.
    pub fn new(out: O, side: S, opts: PrinterOptions) -> Self {
        StreamPrinter {
            out,
            side,
            opts,
            out_mid_line: false,
            side_mid_line: false,
            broke_line: false,
            buffer: String::new(),
            status_line: false,
            last_wait: None,
            waited: false,
            md: opts
                .markdown
                .map(|w| super::markdown::MarkdownStream::new(w, Style::stdout())),
        }
    }

    /// Styling of the side stream.
    pub fn side_style(&self) -> Style {
        self.opts.side_style
    }

    /// Show one event. `Done` and `Error` only end the text; the caller decides what to say.
    pub fn event(&mut self, ev: &StreamEvent) -> io::Result<()> {
        // A refusal is what the model answered: shown as its text.
        let refusal;
        let ev = match ev {
            StreamEvent::RefusalDelta { text } => {
                refusal = StreamEvent::TextDelta { text: text.clone() };
                &refusal
            }
            ev => ev,
        };
        if let StreamEvent::Queued {
            reason,
            until_unix_ms,
            deadline_unix_ms,
        } = ev
        {
            self.waited = true;
            let line = queued_notice(reason, *until_unix_ms, *deadline_unix_ms, now_unix_ms());
            let line = self.opts.side_style.yellow(&line);
            if self.opts.live {
                if !self.status_line {
                    self.fresh_line()?;
                }
                write!(self.side, "\r\x1b[2K{line}")?;
                self.side.flush()?;
                self.status_line = true;
            } else if self.last_wait.as_deref() != Some(gist(reason).as_str()) {
                self.last_wait = Some(gist(reason));
                self.note(&line)?;
            }
            return Ok(());
        }
        self.clear_status()?;
        match ev {
            // A wait before this provider started is over; it explains no later failure.
            StreamEvent::Started { .. } => self.waited = false,
            StreamEvent::TextDelta { text } if !text.is_empty() => {
                if self.opts.buffer_text {
                    self.buffer.push_str(text);
                    return Ok(());
                }
                if self.side_mid_line && self.opts.same_screen {
                    self.side.write_all(b"\n")?;
                    self.side.flush()?;
                    self.side_mid_line = false;
                }
                // Right after a line break we inserted for a notice, the space that joined the
                // two halves of the answer would only indent the new line.
                let shown = if self.broke_line {
                    text.trim_start_matches([' ', '\t'])
                } else {
                    text
                };
                // On a terminal, never an escape sequence out of a model's mouth.
                let safe = printable(shown);
                let shown: &str = &safe;
                if shown.is_empty() {
                    return Ok(());
                }
                self.broke_line = false;
                match &mut self.md {
                    Some(md) => md.push(shown, &mut self.out)?,
                    None => {
                        self.out.write_all(shown.as_bytes())?;
                        self.out.flush()?;
                    }
                }
                self.out_mid_line = !shown.ends_with('\n');
            }
            StreamEvent::ThinkingDelta { text } if self.opts.show_thinking && !text.is_empty() => {
                if self.out_mid_line && self.opts.same_screen {
                    self.out.write_all(b"\n")?;
                    self.out.flush()?;
                    self.out_mid_line = false;
                }
                let styled = self.opts.side_style.dim(&printable(text));
                self.side.write_all(styled.as_bytes())?;
                self.side.flush()?;
                self.side_mid_line = !text.ends_with('\n');
            }
            StreamEvent::ToolCallStart { name, .. } => {
                let line = self
                    .opts
                    .side_style
                    .dim(&format!("[tool call: {}]", printable(name)));
                self.note(&line)?;
            }
            StreamEvent::Rerouted {
                from,
                to,
                reason,
                mode,
            } => {
                if *mode == RerouteMode::Restart {
                    self.buffer.clear();
                    if let Some(md) = &mut self.md {
                        md.reset();
                    }
                }
                let notice = reroute_notice(from, to, reason, *mode, self.waited);
                self.waited = false;
                let line = self.opts.side_style.yellow(&notice);
                self.note(&line)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Take a live waiting line off the screen.
    fn clear_status(&mut self) -> io::Result<()> {
        if self.status_line {
            self.side.write_all(b"\r\x1b[2K")?;
            self.side.flush()?;
            self.status_line = false;
        }
        Ok(())
    }

    /// Print `line` (already styled) on a line of its own on the side stream.
    pub fn note(&mut self, line: &str) -> io::Result<()> {
        self.clear_status()?;
        self.fresh_line()?;
        writeln!(self.side, "{line}")?;
        self.side.flush()
    }

    /// The answer is complete: write a held-back answer and end the last line.
    pub fn finish(&mut self) -> io::Result<()> {
        self.clear_status()?;
        if let Some(md) = &mut self.md {
            if self.out_mid_line {
                md.finish(&mut self.out)?;
                self.out_mid_line = false;
            }
        }
        if self.opts.buffer_text && !self.buffer.is_empty() {
            let text = std::mem::take(&mut self.buffer);
            self.out.write_all(text.as_bytes())?;
            self.out_mid_line = !text.ends_with('\n');
        }
        self.end_lines()
    }

    /// The answer will not complete (error, cancel): drop a held-back answer and end the lines
    /// already started.
    pub fn abandon(&mut self) -> io::Result<()> {
        self.clear_status()?;
        self.buffer.clear();
        self.end_lines()
    }

    fn end_lines(&mut self) -> io::Result<()> {
        if self.side_mid_line {
            self.side.write_all(b"\n")?;
            self.side_mid_line = false;
        }
        if self.out_mid_line {
            self.out.write_all(b"\n")?;
            self.out_mid_line = false;
        }
        self.side.flush()?;
        self.out.flush()
    }

    /// Before a notice: make sure the screen's cursor is at the start of a line.
    fn fresh_line(&mut self) -> io::Result<()> {
        if self.out_mid_line && self.opts.same_screen {
            if let Some(md) = &mut self.md {
                // The line in progress is drawn for good; what follows goes below the notice.
                md.detach(&mut self.out)?;
            }
        }
        if self.side_mid_line {
            self.side.write_all(b"\n")?;
            self.side_mid_line = false;
        }
        if self.out_mid_line && self.opts.same_screen {
            self.out.write_all(b"\n")?;
            self.out.flush()?;
            self.out_mid_line = false;
            self.broke_line = true;
        }
        Ok(())
    }

    /// The two writers (tests).
    #[cfg(test)]
    pub fn into_inner(self) -> (O, S) {
        (self.out, self.side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printer(buffer: bool, same_screen: bool) -> StreamPrinter<Vec<u8>, Vec<u8>> {
        StreamPrinter::new(
            Vec::new(),
            Vec::new(),
            PrinterOptions {
                buffer_text: buffer,
                show_thinking: true,
                same_screen,
                side_style: Style::PLAIN,
                live: same_screen,
                markdown: None,
            },
        )
    }

    fn text(t: &str) -> StreamEvent {
        StreamEvent::TextDelta { text: t.into() }
    }

    fn reroute(mode: RerouteMode) -> StreamEvent {
        StreamEvent::Rerouted {
            from: "sim-deepseek".into(),
            to: "sim-openai".into(),
            reason: "connection dropped".into(),
            mode,
        }
    }

    fn outputs(p: StreamPrinter<Vec<u8>, Vec<u8>>) -> (String, String) {
        let (o, s) = p.into_inner();
        (String::from_utf8(o).unwrap(), String::from_utf8(s).unwrap())
    }

    fn queued(reason: &str, wait_ms: u64) -> StreamEvent {
        let now = now_unix_ms();
        StreamEvent::Queued {
            reason: reason.into(),
            until_unix_ms: Some(now + wait_ms),
            deadline_unix_ms: now + 30_000,
        }
    }

    /// Every provider failed and the request waited: the failure that led to the wait is told
    /// as past once the wait was shown (it used to read as if it came after the wait).
    #[test]
    fn a_reroute_after_a_wait_says_the_failure_came_first() {
        let mut p = printer(false, false);
        let started = StreamEvent::Started {
            provider: "sim-openai".into(),
            model: "m".into(),
            attempt: 2,
            record: 1,
            setup_us: 0,
        };
        for ev in [
            queued("sim-openai: rate limited, 3.0 s left", 3_000),
            reroute(RerouteMode::Continue),
            started.clone(),
            text("Hello"),
            reroute(RerouteMode::Continue),
        ] {
            p.event(&ev).unwrap();
        }
        let (_, side) = outputs(p);
        let notices: Vec<&str> = side.lines().filter(|l| l.starts_with('↪')).collect();
        assert_eq!(
            notices,
            [
                "↪ sim-deepseek had failed (connection dropped); after the wait, continuing on \
                 sim-openai",
                // A wait before the provider started explains no later failure.
                "↪ sim-deepseek failed (connection dropped): continuing on sim-openai",
            ],
            "{side}"
        );
    }

    #[test]
    fn a_wait_is_a_countdown_line_that_goes_away() {
        let mut p = printer(false, true);
        for ev in [
            queued("anthropic: rate limited, 4.0 s left", 4_000),
            queued("anthropic: rate limited, 3.0 s left", 3_000),
            text("Hello"),
        ] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        let (out, side) = outputs(p);
        assert_eq!(out, "Hello\n");
        // Drawn, redrawn in place, then erased before the answer.
        assert_eq!(side.matches("\r\x1b[2K").count(), 3, "{side:?}");
        assert!(
            side.contains(
                "waiting for capacity (anthropic: rate limited, 3.0 s left): expected in 3"
            ),
            "{side:?}"
        );
        assert!(side.ends_with("\r\x1b[2K"), "{side:?}");
    }

    #[test]
    fn a_wait_in_a_pipe_is_one_line_per_reason() {
        let mut p = printer(true, false);
        for ev in [
            queued("anthropic: rate limited, 4.0 s left", 4_000),
            queued("anthropic: rate limited, 3.0 s left", 3_000),
            queued("deepseek: cooling down, 9 s left", 9_000),
            text("Hello"),
        ] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        let (out, side) = outputs(p);
        assert_eq!(out, "Hello\n");
        assert_eq!(side.lines().count(), 2, "{side}");
        assert!(!side.contains('\x1b'));
    }

    #[test]
    fn continue_on_a_shared_screen_puts_the_notice_on_its_own_line() {
        let mut p = printer(false, true);
        for ev in [
            text("Hello,"),
            reroute(RerouteMode::Continue),
            text(" "),
            text(" world"),
        ] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        let (out, side) = outputs(p);
        assert_eq!(out, "Hello,\nworld\n");
        assert_eq!(
            side,
            "↪ sim-deepseek failed (connection dropped): continuing on sim-openai\n"
        );
    }

    /// An answer that holds escape sequences (a window title, a clipboard write, a screen
    /// clear) shows them as pictures on a terminal; piped, the answer is kept byte for byte.
    #[test]
    fn escape_sequences_in_an_answer_do_not_reach_the_terminal() {
        let evil = "see \x1b]52;c;aGk=\x07 and \x1b[2J\r done\n";
        let mut p = printer(false, false);
        p.event(&text(evil)).unwrap();
        p.finish().unwrap();
        let out = outputs(p).0;
        assert!(!out.contains('\x1b') && !out.contains('\x07') && !out.contains('\r'));
        assert_eq!(out, "see \u{241b}]52;c;aGk=\u{2407} and \u{241b}[2J done\n");
        let mut piped = printer(true, false);
        piped.event(&text(evil)).unwrap();
        piped.finish().unwrap();
        assert!(outputs(piped).0.starts_with(evil));
    }

    #[test]
    fn separate_streams_keep_the_answer_unbroken() {
        let mut p = printer(false, false);
        for ev in [text("Hel"), reroute(RerouteMode::Continue), text("lo")] {
            p.event(&ev).unwrap();
        }
        p.finish().unwrap();
        assert_eq!(outputs(p).0, "Hello\n");
    }

    #[test]
    fn a_held_back_answer_forgets_what_a_restart_discards() {
        let mut p = printer(true, false);
        for ev in [
            text("Partial"),
            reroute(RerouteMode::Restart),
            text("Whole answer."),
        ] {
            p.event(&ev).unwrap();
        }
        let (out, _) = {
            p.finish().unwrap();
            outputs(p)
        };
        assert_eq!(out, "Whole answer.\n");

        let mut p = printer(true, false);
        p.event(&text("never shown")).unwrap();
        p.abandon().unwrap();
        assert_eq!(outputs(p).0, "");
    }

    #[test]
    fn thinking_goes_to_the_side_stream_on_its_own_lines() {
        let mut p = printer(false, true);
        for ev in [
            StreamEvent::ThinkingDelta { text: "hmm".into() },
            text("Answer"),
        ] {
            p.event(&ev).unwrap();
        }
        p.note("[footer]").unwrap();
        let (out, side) = outputs(p);
        assert_eq!(side, "hmm\n[footer]\n");
        assert_eq!(out, "Answer\n");
    }
}
