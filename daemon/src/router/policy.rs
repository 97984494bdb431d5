//! What to do after a failed attempt: a pure function of the outcome and the facts around it.
//!
//! The router's loop only carries out what [`decide`] says; all the judgement lives here and is
//! tested as a table. Two questions are answered separately:
//!
//! - [`Effect`]: what the failure says about the provider (a fault that counts toward its
//!   breaker and success rate, a pause it asked for, a key or account it rejected). This does
//!   not depend on what the request does next.
//! - [`Next`]: what this request does now: retry the same provider, fail over, restart without
//!   the continuation, or give the error to the client.
//!
//! The rules, in words:
//! - A `429` is a quota running out, not a fault: the provider is paused for its `Retry-After`
//!   and the request fails over at once. Waiting on it is for pins (and for when nothing else is
//!   eligible, which admission handles by queueing).
//! - Overload (`529`/`503`) fails over at once when another provider can take the request now;
//!   otherwise it is retried with backoff.
//! - Other transient faults before any content (5xx, a connection reset, a truncated or
//!   malformed stream) get one quick retry on the same provider when it has been healthy (a
//!   blip), and otherwise fail over; a failed connect fails over at once. With nowhere else to
//!   go they are retried with backoff.
//! - A stall is re-routed, never retried: the watchdog already waited. A failure after content
//!   reached the client continues on the next provider.
//! - `401/403` and billing failures disable the provider; context-length and `422` failures go to
//!   another provider without blame; other `4xx` are the caller's and go back to the client.
//! - A pinned request never fails over: it retries within its budget, then surfaces the error.
//! - Every retry on the same provider needs its retry budget.

use std::time::Duration;

use mythos_protocol::ErrorKind;

/// Why a provider is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disable {
    /// It rejected the key (401/403): until the key changes or a reset.
    Auth,
    /// The account cannot pay: until a reset or a long cooldown.
    Billing,
}

/// What a failed attempt says about the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effect {
    /// A fault: counts against the breaker and the success rate.
    pub fault: bool,
    /// Not a fault, but the provider did not serve the request: counts against its success
    /// rate (so it ranks lower) and not against its breaker.
    pub miss: bool,
    /// The provider asked for a pause of this long (to be capped by the caller).
    pub pause: Option<Duration>,
    /// The provider must not be used until further notice.
    pub disable: Option<Disable>,
    /// The provider refused to continue another provider's answer (assistant prefill).
    pub no_prefill: bool,
}

/// What the request does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Give this error to the client.
    Surface,
    /// Try the same provider again after this long (its pause, if any, is waited out in the
    /// admission queue).
    Retry {
        /// Backoff before the retry.
        after: Duration,
    },
    /// Try the same provider at once, from the start of the answer instead of continuing it.
    Restart,
    /// Try the same provider at once, with the response format in words: it refused the
    /// format asked with its API's own field.
    InWords,
    /// Leave this provider for now and go to the next one.
    FailOver,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Facts {
    /// What failed.
    pub kind: ErrorKind,
    /// The HTTP status, if the failure had one.
    pub status: Option<u16>,
    /// The provider's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// Whether the provider's message says it refuses a prefill (only read for a `400`).
    pub prefill_rejected: bool,
    /// Another provider already refused this request as bad (a `400`): the request is, not
    /// the provider's taste.
    pub refused_elsewhere: bool,
    /// This request already started over here after a refused continuation.
    pub restarted_here: bool,
    /// The attempt asked for structured output with the API's own field.
    pub native_format: bool,
    /// The request holds images or documents, which not every provider reads (DeepSeek,
    /// many local servers answer `400`).
    pub attachments: bool,
    /// The provider's server answered at all (a failed connect is not a blip worth a retry
    /// while another provider is free).
    pub connected: bool,
    /// This attempt had already sent content to the client.
    pub progressed: bool,
    /// This attempt continued an answer another attempt started.
    pub continuation: bool,
    /// This attempt was the half-open probe of the provider's breaker.
    pub probe: bool,
    /// The request is pinned to this provider (deterministic mode).
    pub pinned: bool,
    /// Retries this request already made on this provider.
    pub retries_here: u32,
    /// The most retries a request may make on one provider.
    pub max_retries: u32,
    /// The provider has been healthy lately, so this is likely a blip.
    pub healthy: bool,
    /// The provider's retry budget has room.
    pub budget: bool,
    /// Another provider could take the request right now.
    pub alternative: bool,
    /// Another provider could take it at all, now or after a wait (a rate limit, a cooldown).
    pub others: bool,
    /// Backoff before the next retry on this provider (jittered by the caller).
    pub backoff: Duration,
    /// Backoff of a quick retry (the first step).
    pub quick: Duration,
}

/// Decide what a failed attempt means and what the request does next.
pub fn decide(f: &Facts) -> (Next, Effect) {
    let mut effect = Effect::default();
    let can_retry = f.budget && f.retries_here < f.max_retries;
    let retry = Next::Retry { after: f.backoff };
    let away = if f.pinned {
        Next::Surface
    } else {
        Next::FailOver
    };
    let next = match f.kind {
        ErrorKind::Cancelled | ErrorKind::Internal | ErrorKind::ShuttingDown => Next::Surface,
        ErrorKind::BadRequest if f.continuation && !f.progressed && !f.restarted_here => {
            // Most likely the continuation itself was refused; start over on the same provider.
            effect.no_prefill = f.prefill_rejected;
            Next::Restart
        }
        // Structured output is where providers differ most (schema keywords, JSON mode beside
        // tools, models without it): a `400` to a request that asked for it natively is
        // retried once with the schema in words rather than handed to the client. A `400`
        // for another reason comes back the same and goes to the client then.
        ErrorKind::BadRequest if f.native_format && !f.progressed && !f.refused_elsewhere => {
            Next::InWords
        }
        ErrorKind::BadRequest if f.status == Some(422) => away,
        // An image or a PDF this provider cannot read: another may. Only when every one
        // refuses is the `400` the client's.
        ErrorKind::BadRequest if f.attachments && !f.progressed => away,
        // A second opinion: providers refuse what others take (a tool schema, a parameter, a
        // message shape), and a session must not end on one provider's taste while another
        // would answer. A request two providers refuse is the client's to fix.
        // One that must be waited for is still asked (a 418 from one provider went to the
        // client while the others were rate limited for a few seconds; found by a chaos run).
        ErrorKind::BadRequest if !f.progressed && f.others && !f.refused_elsewhere => away,
        ErrorKind::BadRequest | ErrorKind::Protocol => Next::Surface,
        ErrorKind::ContextLength => away,
        ErrorKind::Auth => {
            effect.disable = Some(Disable::Auth);
            away
        }
        ErrorKind::Billing => {
            effect.disable = Some(Disable::Billing);
            away
        }
        ErrorKind::RateLimited => {
            // `Retry-After: 0` (some gateways' default) says no more than no header: asked
            // again at once, a provider limiting most requests was hammered, each `429`
            // spending an attempt, until requests failed while it answered others.
            effect.pause = Some(match f.retry_after {
                Some(d) if !d.is_zero() => d.max(MIN_RATE_LIMIT_HINT),
                _ => DEFAULT_PAUSE,
            });
            if f.pinned && can_retry {
                // The pause is waited out in the queue, visibly.
                Next::Retry {
                    after: Duration::ZERO,
                }
            } else {
                away
            }
        }
        ErrorKind::Overloaded => {
            // An overloaded server that says when to come back has said what the router needs:
            // it is paused for that long and ranks lower, like a quota running out. Its breaker
            // is for servers that fail without warning: counted as faults, five `529`s with
            // `Retry-After: 2` opened it for the whole cooldown (30 s and up) instead of 2 s.
            // A `Retry-After` under a second (`0`, some proxies' default) says nothing, and a
            // probe's answer is the verdict its breaker waits for: both are faults.
            let told = f.retry_after.is_some_and(|d| d >= MIN_TOLD_PAUSE);
            effect.fault = !told || f.probe;
            effect.miss = !effect.fault;
            effect.pause = f.retry_after;
            if f.pinned || !f.alternative {
                if can_retry && !f.probe {
                    retry
                } else {
                    away
                }
            } else {
                Next::FailOver
            }
        }
        ErrorKind::Timeout => {
            effect.fault = true;
            if f.pinned && can_retry && !f.probe {
                retry
            } else {
                away
            }
        }
        ErrorKind::NotFound => {
            // An unknown model or endpoint is a configuration fault of this entry.
            effect.fault = true;
            away
        }
        ErrorKind::ServerError
        | ErrorKind::Network
        | ErrorKind::Truncated
        | ErrorKind::Malformed => {
            effect.fault = true;
            effect.pause = f.retry_after;
            if f.probe {
                away
            } else if f.pinned || !f.alternative {
                if can_retry {
                    retry
                } else {
                    away
                }
            } else if f.connected && !f.progressed && f.healthy && f.retries_here == 0 && f.budget {
                Next::Retry { after: f.quick }
            } else {
                Next::FailOver
            }
        }
        // Kinds the router produces itself, never an attempt's outcome.
        ErrorKind::NoProviders | ErrorKind::AllCoolingDown | ErrorKind::Offline => Next::Surface,
    };
    (next, effect)
}

/// The shortest `Retry-After` that makes an overload a pause rather than a fault.
pub const MIN_TOLD_PAUSE: Duration = Duration::from_secs(1);

/// How long a `429` without `Retry-After` pauses a provider.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(2);

/// The shortest pause a `429` gets when it asks for one (a `retry-after-ms` of a few): a
/// quota's few hundred milliseconds are advice, and taken. One that asks for none
/// (`Retry-After: 0`) gives no advice and is taken as a `429` without the header.
pub const MIN_RATE_LIMIT_HINT: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: ErrorKind) -> Facts {
        Facts {
            kind,
            status: None,
            retry_after: None,
            prefill_rejected: false,
            refused_elsewhere: false,
            restarted_here: false,
            native_format: false,
            attachments: false,
            connected: true,
            progressed: false,
            continuation: false,
            probe: false,
            pinned: false,
            retries_here: 0,
            max_retries: 3,
            healthy: true,
            budget: true,
            alternative: true,
            others: true,
            backoff: Duration::from_millis(500),
            quick: Duration::from_millis(100),
        }
    }

    const MS100: Next = Next::Retry {
        after: Duration::from_millis(100),
    };
    const MS500: Next = Next::Retry {
        after: Duration::from_millis(500),
    };

    /// The table: (case, facts, expected next, fault, pause).
    #[test]
    fn decision_table() {
        use ErrorKind::*;
        let secs = |s| Some(Duration::from_secs(s));
        let f = facts;
        let rows: Vec<(&str, Facts, Next, bool, Option<Duration>)> = vec![
            // Rate limits are quotas: fail over at once, pause the provider, blame nobody.
            (
                "429 with others free",
                Facts {
                    retry_after: secs(2),
                    ..f(RateLimited)
                },
                Next::FailOver,
                false,
                secs(2),
            ),
            (
                "429 with nobody else",
                Facts {
                    retry_after: secs(2),
                    alternative: false,
                    ..f(RateLimited)
                },
                Next::FailOver,
                false,
                secs(2),
            ),
            (
                "429 pinned waits in the queue",
                Facts {
                    retry_after: secs(2),
                    pinned: true,
                    ..f(RateLimited)
                },
                Next::Retry {
                    after: Duration::ZERO,
                },
                false,
                secs(2),
            ),
            (
                "429 without Retry-After",
                f(RateLimited),
                Next::FailOver,
                false,
                Some(DEFAULT_PAUSE),
            ),
            (
                "429 pinned, retries spent",
                Facts {
                    pinned: true,
                    retries_here: 3,
                    ..f(RateLimited)
                },
                Next::Surface,
                false,
                Some(DEFAULT_PAUSE),
            ),
            // Overload: elsewhere if possible, else backoff.
            (
                "529 with others free",
                f(Overloaded),
                Next::FailOver,
                true,
                None,
            ),
            (
                "529 alone",
                Facts {
                    alternative: false,
                    ..f(Overloaded)
                },
                MS500,
                true,
                None,
            ),
            (
                "529 alone, budget spent",
                Facts {
                    alternative: false,
                    budget: false,
                    ..f(Overloaded)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "503 with Retry-After: paused, not a breaker fault",
                Facts {
                    retry_after: secs(5),
                    ..f(Overloaded)
                },
                Next::FailOver,
                false,
                secs(5),
            ),
            (
                "503 with Retry-After: 0 says nothing: a fault",
                Facts {
                    retry_after: Some(Duration::ZERO),
                    ..f(Overloaded)
                },
                Next::FailOver,
                true,
                Some(Duration::ZERO),
            ),
            (
                "529 with Retry-After to the probe: a failed probe",
                Facts {
                    retry_after: secs(2),
                    probe: true,
                    ..f(Overloaded)
                },
                Next::FailOver,
                true,
                secs(2),
            ),
            (
                "529 with Retry-After, alone: retried after the pause",
                Facts {
                    retry_after: secs(2),
                    alternative: false,
                    ..f(Overloaded)
                },
                MS500,
                false,
                secs(2),
            ),
            // Blips: one quick retry on a healthy provider, else away.
            (
                "500 on a healthy provider",
                f(ServerError),
                MS100,
                true,
                None,
            ),
            (
                "500 again",
                Facts {
                    retries_here: 1,
                    ..f(ServerError)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "500 on a sick provider",
                Facts {
                    healthy: false,
                    ..f(ServerError)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "500 with the budget spent",
                Facts {
                    budget: false,
                    ..f(ServerError)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "500 alone",
                Facts {
                    alternative: false,
                    retries_here: 1,
                    ..f(ServerError)
                },
                MS500,
                true,
                None,
            ),
            (
                "500 alone, retries spent",
                Facts {
                    alternative: false,
                    retries_here: 3,
                    ..f(ServerError)
                },
                Next::FailOver,
                true,
                None,
            ),
            ("reset before the response", f(Network), MS100, true, None),
            (
                "connect error with others free",
                Facts {
                    connected: false,
                    ..f(Network)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "connect error alone",
                Facts {
                    connected: false,
                    alternative: false,
                    ..f(Network)
                },
                MS500,
                true,
                None,
            ),
            (
                "cut after content",
                Facts {
                    progressed: true,
                    ..f(Network)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "malformed stream",
                Facts {
                    healthy: false,
                    ..f(Malformed)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "failed probe",
                Facts {
                    probe: true,
                    ..f(ServerError)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "failed probe alone",
                Facts {
                    probe: true,
                    alternative: false,
                    ..f(ServerError)
                },
                Next::FailOver,
                true,
                None,
            ),
            // Stalls are re-routed: the watchdog already waited.
            ("stall", f(Timeout), Next::FailOver, true, None),
            (
                "stall alone",
                Facts {
                    alternative: false,
                    ..f(Timeout)
                },
                Next::FailOver,
                true,
                None,
            ),
            (
                "stall pinned",
                Facts {
                    pinned: true,
                    ..f(Timeout)
                },
                MS500,
                true,
                None,
            ),
            // Pins never fail over.
            (
                "500 pinned",
                Facts {
                    pinned: true,
                    ..f(ServerError)
                },
                MS500,
                true,
                None,
            ),
            (
                "500 pinned, spent",
                Facts {
                    pinned: true,
                    retries_here: 3,
                    ..f(ServerError)
                },
                Next::Surface,
                true,
                None,
            ),
            // 4xx. A 400 gets a second opinion from another provider (blaming neither); a
            // request two providers refuse is the client's.
            (
                "400",
                Facts {
                    status: Some(400),
                    ..f(BadRequest)
                },
                Next::FailOver,
                false,
                None,
            ),
            (
                "400 while the others wait out a rate limit",
                Facts {
                    status: Some(400),
                    alternative: false,
                    ..f(BadRequest)
                },
                Next::FailOver,
                false,
                None,
            ),
            (
                "400 refused elsewhere too",
                Facts {
                    status: Some(400),
                    refused_elsewhere: true,
                    ..f(BadRequest)
                },
                Next::Surface,
                false,
                None,
            ),
            (
                "400 with no other provider",
                Facts {
                    status: Some(400),
                    alternative: false,
                    others: false,
                    ..f(BadRequest)
                },
                Next::Surface,
                false,
                None,
            ),
            (
                "400 to a continuation, already started over here",
                Facts {
                    status: Some(400),
                    continuation: true,
                    restarted_here: true,
                    ..f(BadRequest)
                },
                Next::FailOver,
                false,
                None,
            ),
            (
                "400 to structured output, refused elsewhere too",
                Facts {
                    status: Some(400),
                    native_format: true,
                    refused_elsewhere: true,
                    ..f(BadRequest)
                },
                Next::Surface,
                false,
                None,
            ),
            (
                "400 after text went out",
                Facts {
                    status: Some(400),
                    progressed: true,
                    ..f(BadRequest)
                },
                Next::Surface,
                false,
                None,
            ),
            (
                "422",
                Facts {
                    status: Some(422),
                    ..f(BadRequest)
                },
                Next::FailOver,
                false,
                None,
            ),
            (
                "422 pinned",
                Facts {
                    status: Some(422),
                    pinned: true,
                    ..f(BadRequest)
                },
                Next::Surface,
                false,
                None,
            ),
            (
                "context length",
                f(ContextLength),
                Next::FailOver,
                false,
                None,
            ),
            (
                "context length pinned",
                Facts {
                    pinned: true,
                    ..f(ContextLength)
                },
                Next::Surface,
                false,
                None,
            ),
            ("404", f(NotFound), Next::FailOver, true, None),
            ("cancel", f(Cancelled), Next::Surface, false, None),
            ("local resources", f(Internal), Next::Surface, false, None),
        ];
        for (case, facts, next, fault, pause) in rows {
            let (n, e) = decide(&facts);
            assert_eq!(n, next, "{case}: next");
            assert_eq!(e.fault, fault, "{case}: fault");
            assert_eq!(e.pause, pause, "{case}: pause");
            // Overload that says when to come back still ranks the provider lower.
            let told = facts.kind == Overloaded
                && facts.retry_after.is_some_and(|d| d >= MIN_TOLD_PAUSE)
                && !facts.probe;
            assert_eq!(e.miss, told, "{case}: miss");
        }
    }

    #[test]
    fn accounts_and_continuations() {
        let (n, e) = decide(&facts(ErrorKind::Auth));
        assert_eq!(
            (n, e.disable, e.fault),
            (Next::FailOver, Some(Disable::Auth), false)
        );
        let (n, e) = decide(&facts(ErrorKind::Billing));
        assert_eq!((n, e.disable), (Next::FailOver, Some(Disable::Billing)));
        let pinned = Facts {
            pinned: true,
            ..facts(ErrorKind::Billing)
        };
        assert_eq!(decide(&pinned).0, Next::Surface);
        // A 400 on a continuation restarts on the same provider; only an explicit prefill
        // rejection is remembered.
        let cont = Facts {
            continuation: true,
            status: Some(400),
            ..facts(ErrorKind::BadRequest)
        };
        assert_eq!(decide(&cont), (Next::Restart, Effect::default()));
        let format = Facts {
            native_format: true,
            status: Some(400),
            ..facts(ErrorKind::BadRequest)
        };
        assert_eq!(decide(&format), (Next::InWords, Effect::default()));
        let pinned = Facts {
            pinned: true,
            ..format.clone()
        };
        assert_eq!(
            decide(&pinned).0,
            Next::InWords,
            "the same provider: pins too"
        );
        let rejected = Facts {
            prefill_rejected: true,
            ..cont.clone()
        };
        assert!(decide(&rejected).1.no_prefill);
        // A context-length 400 on a continuation is not a prefill rejection.
        let long = Facts {
            continuation: true,
            ..facts(ErrorKind::ContextLength)
        };
        assert_eq!(decide(&long), (Next::FailOver, Effect::default()));
    }
}
