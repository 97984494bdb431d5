//! Driving one chat stream: send the request, hand every event to the caller's sink, keep the
//! bookkeeping of what the answer is, and cancel on Ctrl-C when asked to.

use std::io;
use std::time::Duration;

use mythos_protocol::{
    ChatRequest, DoneInfo, ErrorKind, Request, RequestId, RerouteMode, Response, StreamEvent,
    REFUSED_WHILE_STOPPING,
};

use crate::connection::Connection;
use crate::error::Failure;

/// How a stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The answer is complete.
    Done(DoneInfo),
    /// The request failed.
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// One line for the user.
        message: String,
        /// When a provider is expected back.
        retry_at_unix_ms: Option<u64>,
    },
}

/// One reroute, as reported by the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reroute {
    /// Provider that failed.
    pub from: String,
    /// Provider taking over.
    pub to: String,
    /// Why.
    pub reason: String,
    /// Whether the text so far stands.
    pub mode: RerouteMode,
}

/// What is known about an answer so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    /// The answer text, honouring restarts: exactly what the conversation should keep.
    pub text: String,
    /// Provider streaming right now.
    pub provider: Option<String>,
    /// Model streaming right now.
    pub model: Option<String>,
    /// Reroutes, in order.
    pub reroutes: Vec<Reroute>,
    /// Set once the stream ended.
    pub outcome: Option<Outcome>,
}

impl Outcome {
    /// The dim one-line summary printed after a finished answer; `None` for a failure.
    pub fn footer(&self) -> Option<String> {
        match self {
            Outcome::Done(d) => Some(crate::render::footer(
                &d.provider,
                &d.model,
                d.latency_ms,
                d.usage,
                d.cost_usd,
            )),
            Outcome::Failed { .. } => None,
        }
    }
}

impl Turn {
    /// Take one event into account; returns true when it ends the stream.
    pub fn apply(&mut self, ev: &StreamEvent) -> bool {
        match ev {
            StreamEvent::Started {
                provider, model, ..
            } => {
                self.provider = Some(provider.clone());
                self.model = Some(model.clone());
            }
            // A refusal is the model's answer for this turn, and its history.
            StreamEvent::TextDelta { text } | StreamEvent::RefusalDelta { text } => {
                self.text.push_str(text)
            }
            StreamEvent::Rerouted {
                from,
                to,
                reason,
                mode,
            } => {
                // Restart: everything received for this request so far is void.
                if *mode == RerouteMode::Restart {
                    self.text.clear();
                }
                self.reroutes.push(Reroute {
                    from: from.clone(),
                    to: to.clone(),
                    reason: reason.clone(),
                    mode: *mode,
                });
            }
            StreamEvent::Done(done) => {
                self.outcome = Some(Outcome::Done((**done).clone()));
                return true;
            }
            StreamEvent::Error {
                kind,
                message,
                retry_at_unix_ms,
            } => {
                self.outcome = Some(Outcome::Failed {
                    kind: *kind,
                    message: message.clone(),
                    retry_at_unix_ms: *retry_at_unix_ms,
                });
                return true;
            }
            // Server tools are offered by Messages clients only, never by the CLI.
            StreamEvent::ThinkingDelta { .. }
            | StreamEvent::ThinkingSignature { .. }
            | StreamEvent::RedactedThinking { .. }
            | StreamEvent::ServerBlock { .. }
            | StreamEvent::Citation { .. }
            | StreamEvent::ToolCallStart { .. }
            | StreamEvent::ToolCallDelta { .. }
            | StreamEvent::Queued { .. }
            | StreamEvent::Usage(_) => {}
        }
        false
    }
}

/// How often a waiting request's `queued` event is shown again, so a countdown can redraw.
const QUEUED_REDRAW: Duration = Duration::from_secs(1);

/// How [`run`] ended.
#[derive(Debug)]
pub enum Ended {
    /// The daemon ended the stream ([`Turn::outcome`] is set).
    Finished(Turn),
    /// The user pressed Ctrl-C; the stream was cancelled (or the connection abandoned).
    Interrupted,
    /// The connection failed before a single event arrived: the request may never have been
    /// seen, so it is safe to send it again on a new connection.
    NotDelivered(Failure),
}

/// How long to wait for the daemon to confirm a cancel before abandoning the connection.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Run `req` on `conn`, passing every event of it to `sink`. While the request waits for
/// capacity, its last `queued` event is passed again every second (so a countdown can redraw).
///
/// With `ctrl_c`, the first Ctrl-C sends [`Request::Cancel`] and waits (briefly, and without
/// passing further events on) for the stream's end, keeping the connection usable; a second
/// Ctrl-C abandons the connection.
pub async fn run(
    conn: &mut Connection,
    req: ChatRequest,
    ctrl_c: bool,
    sink: &mut dyn FnMut(RequestId, &StreamEvent) -> io::Result<()>,
) -> Result<Ended, Failure> {
    let id = req.id;
    let mut turn = Turn::default();
    if let Err(f) = conn.send(Request::Chat(req)).await {
        return Ok(Ended::NotDelivered(f));
    }
    let mut got_event = false;
    // An attempt started: from then on the request was the daemon's to answer.
    let mut began = false;
    let interrupt = interrupt_signal(ctrl_c);
    tokio::pin!(interrupt);
    let mut waiting: Option<StreamEvent> = None;
    let mut redraw = tokio::time::interval(QUEUED_REDRAW);
    loop {
        let resp = tokio::select! {
            r = conn.recv() => r,
            _ = &mut interrupt => {
                return cancel(conn, id).await;
            }
            _ = redraw.tick(), if waiting.is_some() => {
                if let Some(ev) = &waiting {
                    sink(id, ev)?;
                }
                continue;
            }
        };
        match resp {
            // Refused before any attempt was made, by a daemon on its way out (a restart): no
            // provider saw it, and the next daemon, already serving or about to, takes it as
            // new. A stream the stopping daemon cut (its message differs) is not sent again:
            // a provider may have had it.
            Ok(Response::Event {
                id: got,
                event:
                    StreamEvent::Error {
                        kind: ErrorKind::ShuttingDown,
                        message,
                        ..
                    },
            }) if got == id && !began && message == REFUSED_WHILE_STOPPING => {
                conn.mark_broken();
                return Ok(Ended::NotDelivered(Failure::new(message)));
            }
            Ok(Response::Event { id: got, event }) if got == id => {
                got_event = true;
                began |= matches!(event, StreamEvent::Started { .. });
                if matches!(event, StreamEvent::Queued { .. }) {
                    waiting = Some(event.clone());
                    redraw.reset();
                } else {
                    waiting = None;
                }
                let end = turn.apply(&event);
                sink(id, &event)?;
                if end {
                    return Ok(Ended::Finished(turn));
                }
            }
            // Events of other (abandoned) streams on this connection.
            Ok(Response::Event { .. }) => {}
            Ok(Response::Error { kind, message }) => {
                conn.mark_broken();
                return Err(Failure::new(format!(
                    "mythosd refused the request: {}: {message}",
                    kind.as_str()
                )));
            }
            Ok(other) => {
                conn.mark_broken();
                return Err(Failure::new(format!(
                    "protocol error: unexpected {} during a stream",
                    response_name(&other)
                )));
            }
            Err(f) if !got_event => return Ok(Ended::NotDelivered(f)),
            Err(f) => return Err(f),
        }
    }
}

/// Resolves on Ctrl-C when `enabled`, never otherwise.
async fn interrupt_signal(enabled: bool) {
    if enabled && tokio::signal::ctrl_c().await.is_ok() {
        return;
    }
    std::future::pending::<()>().await
}

async fn cancel(conn: &mut Connection, id: RequestId) -> Result<Ended, Failure> {
    if conn.send(Request::Cancel { id }).await.is_err() {
        return Ok(Ended::Interrupted);
    }
    // Read the stream out so the connection stays in step; its remaining events are no
    // longer wanted.
    let drain = async {
        loop {
            match conn.recv().await {
                Ok(Response::Event { id: got, event })
                    if got == id
                        && matches!(event, StreamEvent::Done(_) | StreamEvent::Error { .. }) =>
                {
                    return
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(CANCEL_GRACE, drain) => {
            if r.is_err() {
                conn.mark_broken();
            }
        }
        _ = tokio::signal::ctrl_c() => conn.mark_broken(),
    }
    Ok(Ended::Interrupted)
}

/// A short name of a response, for protocol errors.
pub fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Event { .. } => "event",
        Response::Status(_) => "status report",
        Response::Why(_) => "why record",
        Response::Usage(_) => "usage report",
        Response::Http { .. } => "HTTP front end",
        Response::Ok => "ok",
        Response::Error { .. } => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mythos_protocol::{FinishReason, Usage};

    fn started(p: &str, attempt: u32) -> StreamEvent {
        StreamEvent::Started {
            provider: p.into(),
            model: format!("{p}-model"),
            attempt,
            record: 0,
            setup_us: 0,
        }
    }

    fn text(t: &str) -> StreamEvent {
        StreamEvent::TextDelta { text: t.into() }
    }

    fn done() -> StreamEvent {
        StreamEvent::Done(Box::new(DoneInfo {
            finish: FinishReason::Stop,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
            cost_usd: 0.001,
            latency_ms: 300,
            provider: "b".into(),
            model: "b-model".into(),
            record: 7,
        }))
    }

    fn reroute(mode: RerouteMode) -> StreamEvent {
        StreamEvent::Rerouted {
            from: "a".into(),
            to: "b".into(),
            reason: "connection dropped".into(),
            mode,
        }
    }

    fn play(events: &[StreamEvent]) -> (Turn, usize) {
        let mut turn = Turn::default();
        let mut ends = 0;
        for ev in events {
            if turn.apply(ev) {
                ends += 1;
            }
        }
        (turn, ends)
    }

    #[test]
    fn restart_discards_the_text_so_far() {
        let (turn, ends) = play(&[
            started("a", 1),
            text("The answer is "),
            reroute(RerouteMode::Restart),
            started("b", 2),
            text("Forty-two."),
            done(),
        ]);
        assert_eq!(turn.text, "Forty-two.");
        assert_eq!(ends, 1);
        assert_eq!(turn.provider.as_deref(), Some("b"));
        assert_eq!(turn.reroutes.len(), 1);
        assert!(matches!(
            turn.outcome,
            Some(Outcome::Done(DoneInfo { record: 7, .. }))
        ));
    }

    #[test]
    fn continue_keeps_the_text_so_far() {
        let (turn, _) = play(&[
            started("a", 1),
            text("The answer "),
            reroute(RerouteMode::Continue),
            started("b", 2),
            text("is forty-two."),
            done(),
        ]);
        assert_eq!(turn.text, "The answer is forty-two.");
    }

    #[test]
    fn thinking_and_tools_are_not_answer_text() {
        let (turn, _) = play(&[
            StreamEvent::ThinkingDelta { text: "hmm".into() },
            StreamEvent::ToolCallStart {
                index: 0,
                id: "t".into(),
                name: "read".into(),
            },
            text("ok"),
        ]);
        assert_eq!(turn.text, "ok");
        assert!(turn.outcome.is_none());
    }

    #[test]
    fn errors_end_the_stream() {
        let (turn, ends) = play(&[StreamEvent::Error {
            kind: ErrorKind::AllCoolingDown,
            message: "every provider is cooling down".into(),
            retry_at_unix_ms: Some(5),
        }]);
        assert_eq!(ends, 1);
        assert!(matches!(
            turn.outcome,
            Some(Outcome::Failed {
                kind: ErrorKind::AllCoolingDown,
                retry_at_unix_ms: Some(5),
                ..
            })
        ));
    }
}
