//! `mythos ask`: one question, one streamed answer.
//!
//! Output contract, for scripts and editors:
//! - stdout carries the answer text and nothing else, ending with a newline. On a terminal it
//!   streams; otherwise it is written once complete, so a file or pipe never holds text the
//!   daemon discarded (a restarted answer).
//! - stderr carries reroute notices, the footer (only on a terminal or with `--verbose`) and,
//!   on failure, one `mythos: kind: message` line plus a hint.
//! - `--json` prints every event as it arrives, one `{"event":{"id":..,"event":..}}` object
//!   per line (the protocol's JSON form of `Response::Event`).
//! - Exit status 0 when the answer completed, 1 when it failed.

use std::io::{self, IsTerminal, Read, Write};

use mythos_protocol::{ChatRequest, Pin, RequestId, Response, StreamEvent, TaskKind};

use super::{eprint_line, stream_failure, Globals};
use crate::connection::Connection;
use crate::error::{Failure, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use crate::render::{PrinterOptions, StreamPrinter};
use crate::stream::{self, Ended, Outcome};

/// What `mythos ask` was asked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AskOptions {
    /// Prompt words; empty or `-` means stdin.
    pub prompt: Vec<String>,
    /// Pin to this provider.
    pub provider: Option<String>,
    /// Pin to this model.
    pub model: Option<String>,
    /// Task kind.
    pub task: TaskKind,
    /// System prompt.
    pub system: Option<String>,
    /// Output token limit.
    pub max_tokens: Option<u32>,
    /// Print events as JSON lines.
    pub json: bool,
    /// Print the footer even when stderr is not a terminal.
    pub verbose: bool,
    /// Print thinking text (dimmed, on stderr).
    pub show_thinking: bool,
    /// Print the answer as it is, without Markdown rendering.
    pub raw: bool,
}

/// Ask once and print the answer.
pub async fn run(g: &Globals, opts: AskOptions) -> Result<u8, Failure> {
    let prompt = prompt_text(&opts.prompt)?;
    let pinned = opts.provider.is_some() || opts.model.is_some();
    let mut conn = Connection::connect_or_start(&g.target).await?;
    // One retry when the request never reached the daemon (it was stopping as we connected).
    for attempt in 0..2 {
        let req = build_request(conn.next_id(), &opts, &prompt);
        let mut printer = StreamPrinter::new(
            io::stdout(),
            io::stderr(),
            PrinterOptions::for_terminal(opts.show_thinking).raw(opts.raw),
        );
        let mut json_out = io::stdout();
        let mut last_queued: Option<StreamEvent> = None;
        let ended = {
            let mut sink = |id: RequestId, ev: &StreamEvent| {
                if opts.json {
                    // A waiting request's `queued` event comes again each second for the
                    // countdown; a JSON reader wants each one once.
                    if matches!(ev, StreamEvent::Queued { .. }) {
                        if last_queued.as_ref() == Some(ev) {
                            return Ok(());
                        }
                        last_queued = Some(ev.clone());
                    }
                    json_line(&mut json_out, id, ev)
                } else {
                    printer.event(ev)
                }
            };
            // Ctrl-C cancels the request (the provider stops generating, and billing, at
            // once) and ends the line, rather than killing the process mid-line.
            stream::run(&mut conn, req, true, &mut sink).await
        };
        // The daemon went away mid-answer: the error goes on a line of its own, not glued to
        // the last word printed.
        let ended = match ended {
            Ok(ended) => ended,
            Err(failure) => {
                if !opts.json {
                    printer.abandon()?;
                }
                return Err(failure);
            }
        };
        let turn = match ended {
            Ended::Finished(turn) => turn,
            Ended::NotDelivered(_) if attempt == 0 => {
                conn = Connection::connect_or_start(&g.target).await?;
                continue;
            }
            Ended::NotDelivered(f) => return Err(f),
            Ended::Interrupted => {
                if !opts.json {
                    printer.abandon()?;
                }
                return Err(Failure::silent(EXIT_INTERRUPTED));
            }
        };
        return match turn.outcome {
            Some(done @ Outcome::Done(_)) => {
                if !opts.json {
                    printer.finish()?;
                    if opts.verbose || io::stderr().is_terminal() {
                        let style = printer.side_style();
                        printer.note(&style.dim(&done.footer().unwrap_or_default()))?;
                    }
                }
                Ok(EXIT_OK)
            }
            Some(Outcome::Failed {
                kind,
                message,
                retry_at_unix_ms,
            }) => {
                if !opts.json {
                    printer.abandon()?;
                }
                Err(stream_failure(kind, &message, retry_at_unix_ms, pinned))
            }
            None => Err(Failure::new("the stream ended without an answer")),
        };
    }
    Err(Failure::new("could not deliver the request to mythosd"))
}

/// One event as a JSON line: the protocol's JSON form of `Response::Event`.
fn json_line(out: &mut impl Write, id: RequestId, ev: &StreamEvent) -> io::Result<()> {
    let resp = Response::Event {
        id,
        event: ev.clone(),
    };
    let line = serde_json::to_string(&resp).map_err(io::Error::other)?;
    writeln!(out, "{line}")?;
    out.flush()
}

/// The prompt: the words joined by spaces, or stdin when there are none or just `-`.
fn prompt_text(words: &[String]) -> Result<String, Failure> {
    let from_stdin = words.is_empty() || (words.len() == 1 && words[0] == "-");
    let text = if from_stdin {
        let mut stdin = io::stdin();
        if stdin.is_terminal() {
            eprint_line("reading the prompt from stdin; end it with Ctrl-D");
        }
        // Bytes that are not UTF-8 (a Latin-1 file, a stray binary byte) become U+FFFD rather
        // than refusing the whole prompt.
        let mut buf = Vec::new();
        stdin
            .read_to_end(&mut buf)
            .map_err(|e| Failure::new(format!("cannot read the prompt from stdin: {e}")))?;
        String::from_utf8_lossy(&buf).into_owned()
    } else {
        words.join(" ")
    };
    // A trailing newline from `echo` or an editor is not part of the question.
    let text = text.trim_end().to_string();
    if text.trim().is_empty() {
        return Err(Failure::new("the prompt is empty")
            .hint("give it as arguments (`mythos ask \"...\"`) or on stdin")
            .code(EXIT_USAGE));
    }
    Ok(text)
}

/// The chat request for one question.
pub fn build_request(id: RequestId, opts: &AskOptions, prompt: &str) -> ChatRequest {
    let mut req = ChatRequest::user_text(id, prompt);
    req.system = opts.system.clone();
    req.task = opts.task;
    req.max_tokens = opts.max_tokens;
    if opts.provider.is_some() || opts.model.is_some() {
        req.pin = Some(Pin {
            provider: opts.provider.clone(),
            model: opts.model.clone(),
        });
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{Message, Role};

    #[test]
    fn request_from_options() {
        let opts = AskOptions {
            provider: Some("sim-deepseek".into()),
            task: TaskKind::Code,
            system: Some("be brief".into()),
            max_tokens: Some(100),
            ..AskOptions::default()
        };
        let req = build_request(3, &opts, "hi");
        assert_eq!(req.id, 3);
        assert_eq!(req.messages, vec![Message::text(Role::User, "hi")]);
        assert_eq!(req.task, TaskKind::Code);
        assert_eq!(req.system.as_deref(), Some("be brief"));
        assert_eq!(req.max_tokens, Some(100));
        assert_eq!(
            req.pin,
            Some(Pin {
                provider: Some("sim-deepseek".into()),
                model: None
            })
        );
        let req = build_request(1, &AskOptions::default(), "hi");
        assert_eq!(req.pin, None);
        let opts = AskOptions {
            model: Some("gpt-4o".into()),
            ..AskOptions::default()
        };
        assert_eq!(
            build_request(1, &opts, "hi").pin,
            Some(Pin {
                provider: None,
                model: Some("gpt-4o".into())
            })
        );
    }

    #[test]
    fn prompt_words_are_joined() {
        let words = ["what", "is", "a", "monad?"].map(String::from);
        assert_eq!(prompt_text(&words).unwrap(), "what is a monad?");
        let f = prompt_text(&["  ".to_string()]).unwrap_err();
        assert!(f.message.contains("empty"));
    }

    #[test]
    fn json_lines_are_response_events() {
        let mut out = Vec::new();
        json_line(&mut out, 7, &StreamEvent::TextDelta { text: "hi".into() }).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"event\":{\"id\":7,\"event\":{\"text_delta\":{\"text\":\"hi\"}}}}\n"
        );
    }
}
