//! Admission: which provider a request may use *now*, and a fair queue for when none can.
//!
//! A request asks for capacity with a [`Want`] (its candidates, its task, its estimated cost).
//! A provider can take it when its breaker allows, its quotas have room for the cost, it is
//! under its concurrency limit and, for a retry, its retry budget has room. The best-ranked
//! provider that can take it now wins: the request never waits while any candidate has
//! capacity.
//!
//! When none can, but one will within the request's remaining `max_queue_wait`, the request
//! joins a FIFO queue and is told why and until when (a `queued` event). Capacity is handed out
//! in queue order: a request behind others may only take a provider that no request ahead of it
//! is waiting for, so a large request is not starved by small ones arriving later. It holds only
//! what can take it before its own wait ends, and nothing once that wait is over: a place kept
//! for a request that will have given up by then only delays the ones behind it. Grants happen
//! whenever capacity may have returned: an attempt ends, a response announces a larger quota,
//! or a waiter's expected time arrives.
//!
//! A [`Lease`] is the claim on a provider for one attempt: its concurrency slot, its quota
//! reservation and, for a half-open breaker, the single probe. It is released on every path
//! (success, any error, cancel, panic) because releasing is its `Drop`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mythos_protocol::TaskKind;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::health::{secs_left, Breaker, HealthBook, ProviderHealth, BREAKER_HORIZON};
use super::policy::Disable;
use super::quota::{Cost, Room};

/// What a request needs from the pool.
#[derive(Debug, Clone)]
pub struct Want {
    /// What the request is for (ranks the providers).
    pub task: TaskKind,
    /// Providers it may use.
    pub candidates: Vec<usize>,
    /// Candidates where an attempt would be a retry (it needs their retry budget).
    pub retry_at: Vec<usize>,
    /// An attempt the retry budget neither holds back nor is paid by: the continuation of an
    /// answer only the provider that ran its server tool can continue. (A first attempt pays
    /// into the budget; this one is no first attempt, and paying in would refill the budget of
    /// a provider cutting every stream.)
    pub budget_free: bool,
    /// Estimated cost against quotas.
    pub cost: Cost,
    /// Deterministic mode: breakers do not apply.
    pub pinned: bool,
    /// Candidates taken before the others whatever their rank: the only ones that can run
    /// the request's server tools (Anthropic's web search).
    pub prefer: Vec<usize>,
}

/// Whether a provider can take a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Avail {
    /// Now.
    Now,
    /// Not before then.
    At(Instant),
    /// When another request lets go of it (a probe, a concurrency slot, a first answer).
    Later,
    /// Not for this request (key rejected, larger than its quota, retry budget spent).
    Never,
}

/// What admission can say about a request.
#[derive(Debug, Clone)]
pub enum Outlook {
    /// Some candidate can take it now.
    Ready,
    /// None can now; `eta` is the earliest known time one can (`None`: when another request
    /// lets go of one).
    Wait {
        /// Earliest known time.
        eta: Option<Instant>,
        /// Why, per provider, in words.
        reason: String,
    },
    /// No candidate ever will.
    Never {
        /// Why, per provider, in words.
        reason: String,
    },
}

/// A provider taken for one attempt. Dropping it gives everything back without a verdict.
pub struct Lease {
    book: Arc<Mutex<HealthBook>>,
    /// The provider.
    pub index: usize,
    /// This attempt is the half-open probe.
    pub probe: bool,
    seq: u64,
    armed: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("index", &self.index)
            .field("probe", &self.probe)
            .finish()
    }
}

/// Lock the book; a panic elsewhere while it was held does not stop routing.
pub(super) fn lock(book: &Mutex<HealthBook>) -> MutexGuard<'_, HealthBook> {
    book.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lease {
    /// The provider's response announced its quotas (a successful response if `success`).
    pub fn observe(&self, limits: &crate::provider::ratelimit::RateLimits, success: bool) {
        let now = Instant::now();
        let mut book = lock(&self.book);
        book.providers[self.index]
            .quota
            .observe(self.seq, limits, success, now);
        book.dispatch(&self.book, now);
    }

    /// The provider counted the prompt estimated at `estimated` tokens as `counted` (see
    /// [`super::quota::Quota::learn_input`]).
    pub fn learn_input(&self, estimated: u64, counted: u64) {
        lock(&self.book).providers[self.index]
            .quota
            .learn_input(estimated, counted);
    }

    /// End the attempt: apply `verdict` to the book, then give the slot back.
    pub fn finish(mut self, verdict: impl FnOnce(&mut HealthBook, Instant)) {
        self.armed = false;
        let now = Instant::now();
        let mut book = lock(&self.book);
        verdict(&mut book, now);
        book.release(self.index, self.probe, self.seq);
        book.dispatch(&self.book, now);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            let now = Instant::now();
            let mut book = lock(&self.book);
            book.release(self.index, self.probe, self.seq);
            book.dispatch(&self.book, now);
        }
    }
}

struct Waiter {
    id: u64,
    /// When its request arrived: the queue's order.
    since: Instant,
    /// When it stops waiting.
    deadline: Instant,
    want: Want,
    tx: oneshot::Sender<Lease>,
}

/// Requests waiting for capacity, oldest first.
#[derive(Default)]
pub struct WaitQueue {
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

impl std::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WaitQueue({} waiting)", self.waiters.len())
    }
}

impl WaitQueue {
    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Queue a request that arrived at `since` behind every request that arrived before it,
    /// and ahead of those that came later: a request back for another attempt (its provider
    /// answered `429`, or cut its stream) keeps the place it had. Put at the back, it went
    /// behind every later arrival each time, and the first requests of a burst waited longest
    /// and ran out of time while later ones were answered (found by a chaos run: a fixed
    /// window of 4 requests, 14 clients).
    fn push(
        &mut self,
        want: Want,
        since: Instant,
        deadline: Instant,
        tx: oneshot::Sender<Lease>,
    ) -> u64 {
        self.next_id += 1;
        let at = self.waiters.partition_point(|w| w.since <= since);
        self.waiters.insert(
            at,
            Waiter {
                id: self.next_id,
                since,
                deadline,
                want,
                tx,
            },
        );
        self.next_id
    }

    /// Take waiter `id` out; false if it is gone (it was granted a lease).
    fn remove(&mut self, id: u64) -> bool {
        match self.waiters.iter().position(|w| w.id == id) {
            Some(k) => {
                self.waiters.remove(k);
                true
            }
            None => false,
        }
    }
}

/// While every provider is cooling down, how many streams each may still have at once.
pub const PANIC_IN_FLIGHT: u32 = 2;

/// While every provider is cooling down, how often one that answers nothing is tried anyway,
/// one attempt at a time: an outage that ended is found within seconds, where waiting out the
/// cooldowns (30 s, doubled per failed probe) refused every request for up to four minutes
/// after the providers were back (a helper's run: the first answer 55 s after a 35 s outage
/// of every provider ended). A dead world gets one attempt per provider this often, not the
/// storm that kept every provider busy did (40 times the traffic).
pub const PANIC_PROBE_EVERY: Duration = Duration::from_secs(5);

/// Whether provider `p` answered any of its recent attempts (within the breaker's horizon):
/// failing often, not dead.
fn answering(p: &ProviderHealth, now: Instant) -> bool {
    p.recent
        .iter()
        .any(|&(t, fault)| !fault && now.saturating_duration_since(t) <= BREAKER_HORIZON)
}

impl HealthBook {
    /// Whether every candidate of `want` is cooling down after its faults (none closed, none
    /// being probed, none paused by its quota alone): a breaker then no longer steers requests
    /// to a better provider, it only fails them, and turns a partial outage into a whole one.
    /// In a soak run with 75 % of attempts failing at every provider, every breaker opened and
    /// requests failed at once, "first back in 46 s", for two minutes, where one attempt in
    /// four would have been answered. So each such provider that still answers some requests
    /// (see [`answering`]) takes a few attempts at a time ([`PANIC_IN_FLIGHT`]), as a load
    /// balancer's panic mode does; a fault among them moves no breaker, and the probe at the
    /// cooldown's end still decides when it closes. A provider that answers nothing waits out
    /// its cooldown as before: kept busy, a dead world took 20-30 s to fail each request and
    /// got 40 times the traffic (a paired storm run).
    fn panicking(&self, want: &Want) -> bool {
        let open = |j: &usize| matches!(self.providers[*j].breaker, Breaker::Open { .. });
        !want.pinned
            && want.candidates.iter().any(open)
            && want
                .candidates
                .iter()
                .all(|j| open(j) || matches!(self.providers[*j].breaker, Breaker::Disabled { .. }))
    }

    /// Whether provider `i` can take `want` at `now`, and why not in words.
    pub fn availability(&mut self, i: usize, want: &Want, now: Instant) -> (Avail, String) {
        let panic = self.panicking(want);
        let p = &mut self.providers[i];
        let mut at: Option<Instant> = None;
        let mut later = false;
        let mut why: Vec<String> = Vec::new();
        if !want.pinned {
            match p.breaker {
                Breaker::Disabled {
                    why: Disable::Auth, ..
                } => return (Avail::Never, "key rejected (401/403)".into()),
                Breaker::Disabled {
                    why: Disable::Billing,
                    until,
                } => match until {
                    Some(t) => {
                        at = Some(t);
                        why.push("account cannot pay (billing)".into());
                    }
                    None => return (Avail::Never, "account cannot pay (billing)".into()),
                },
                // Every candidate failing: a few attempts at a time still go to those that
                // answer some (see `panicking`), and the note says so, so that `mythos status`
                // shows why a provider cooling down still answers.
                Breaker::Open { until, .. } if panic && answering(p, now) => {
                    later = p.in_flight >= PANIC_IN_FLIGHT;
                    why.push(format!(
                        "cooling down, {} s left, but so is every provider: still tried, \
                         {PANIC_IN_FLIGHT} at a time",
                        secs_left(until, now)
                    ));
                }
                // Answering nothing lately: tried once in a while, one attempt at a time (see
                // `PANIC_PROBE_EVERY`); an answer closes its breaker.
                Breaker::Open { until, .. } if panic => {
                    let next = p
                        .last_selected
                        .map_or(now, |t| super::health::after(t, PANIC_PROBE_EVERY))
                        .min(until);
                    later = p.in_flight > 0;
                    if next > now {
                        at = Some(next);
                    }
                    why.push(format!(
                        "cooling down, {} s left, but so is every provider: tried once every \
                         {} s",
                        secs_left(until, now),
                        PANIC_PROBE_EVERY.as_secs()
                    ));
                }
                Breaker::Open { until, .. } => {
                    at = Some(until);
                    why.push(format!("cooling down, {} s left", secs_left(until, now)));
                }
                Breaker::HalfOpen { probing: true, .. } => {
                    later = true;
                    why.push("being probed by another request".into());
                }
                Breaker::HalfOpen { .. } | Breaker::Closed => {}
            }
        }
        if want.retry_at.contains(&i) && !p.budget.allows(now) {
            // The budget is a sliding window: it has room again within seconds, which the
            // queue may wait for like any other pause.
            match p.budget.allows_at(now) {
                Some(t) => {
                    at = Some(at.map_or(t, |a| a.max(t)));
                    why.push(format!(
                        "its retry budget is spent, room again in {}",
                        human_ms(t.saturating_duration_since(now))
                    ));
                }
                None => return (Avail::Never, "its retry budget is spent".into()),
            }
        }
        match p.quota.room(p.quota_cost(want.cost), now) {
            Room::Now => {}
            Room::At(t) => {
                at = Some(at.map_or(t, |a| a.max(t)));
                let paused = p.quota.blocked_until(now).is_some();
                let limited = p.quota.limited_until(now).is_some();
                why.push(if paused && !limited {
                    format!(
                        "overloaded, back in {}",
                        human_ms(t.saturating_duration_since(now))
                    )
                } else if paused {
                    format!(
                        "rate limited, {} left",
                        human_ms(t.saturating_duration_since(now))
                    )
                } else {
                    format!(
                        "quota spent, room again in {}",
                        human_ms(t.saturating_duration_since(now))
                    )
                });
            }
            Room::AfterPending => {
                later = true;
                why.push("its quota is taken by requests in flight".into());
            }
            Room::Never => return (Avail::Never, "the request is larger than its quota".into()),
        }
        if p.in_flight >= p.max_concurrent {
            later = true;
            why.push(format!("all {} of its streams busy", p.max_concurrent));
        }
        let avail = match (later, at) {
            // Busy and paused: not before the pause ends, whoever lets go of it. As `Later`, a
            // request waited its whole queue limit for a pause that outlasted it (found by a
            // review).
            (_, Some(t)) if t > now => Avail::At(t),
            (true, _) => Avail::Later,
            _ => Avail::Now,
        };
        (avail, why.join(", "))
    }

    /// The best-ranked candidate of `want` that can take it now and that no earlier waiter
    /// holds.
    fn pick(&mut self, want: &Want, now: Instant, held: &[bool]) -> Option<usize> {
        if want.pinned {
            let &i = want.candidates.first()?;
            let free = !held.get(i).copied().unwrap_or(false);
            return (free && self.availability(i, want, now).0 == Avail::Now).then_some(i);
        }
        let mut order: Vec<usize> = self
            .rank(want.task, now)
            .into_iter()
            .map(|r| r.index)
            .filter(|i| want.candidates.contains(i) && !held.get(*i).copied().unwrap_or(false))
            .collect();
        if !want.prefer.is_empty() {
            order.sort_by_key(|i| !want.prefer.contains(i));
        }
        order
            .into_iter()
            .find(|&i| self.availability(i, want, now).0 == Avail::Now)
    }

    /// Whether any candidate of `want` can take it now or very soon: free now, free within
    /// `within`, or held only by requests in flight (a first answer awaited, a busy slot).
    pub fn any_soon(&mut self, want: &Want, now: Instant, within: Duration) -> bool {
        want.candidates
            .clone()
            .into_iter()
            .any(|i| match self.availability(i, want, now).0 {
                Avail::Now | Avail::Later => true,
                Avail::At(t) => t <= now + within,
                Avail::Never => false,
            })
    }

    /// What admission can say about `want` at `now`.
    pub fn outlook(&mut self, want: &Want, now: Instant) -> Outlook {
        self.tick(now);
        let mut eta: Option<Instant> = None;
        let mut later = false;
        let mut reasons = Vec::new();
        for &i in &want.candidates {
            let (avail, why) = self.availability(i, want, now);
            let name = &self.providers[i].name;
            match avail {
                Avail::Now => return Outlook::Ready,
                Avail::At(t) => eta = Some(eta.map_or(t, |e| e.min(t))),
                Avail::Later => later = true,
                Avail::Never => {}
            }
            reasons.push(format!("{name}: {why}"));
        }
        let reason = reasons.join("; ");
        if later {
            // Something may free up any moment; the known time is only an upper bound.
            Outlook::Wait { eta: None, reason }
        } else if eta.is_some() {
            Outlook::Wait { eta, reason }
        } else {
            Outlook::Never { reason }
        }
    }

    /// Take provider `i` for one attempt of `want`.
    fn lease(
        &mut self,
        book: &Arc<Mutex<HealthBook>>,
        i: usize,
        want: &Want,
        now: Instant,
    ) -> Lease {
        let p = &mut self.providers[i];
        p.in_flight += 1;
        p.requests += 1;
        p.last_selected = Some(now);
        if want.retry_at.contains(&i) {
            p.budget.withdraw(now);
        } else if !want.budget_free {
            p.budget.deposit(now);
        }
        let probe = match &mut p.breaker {
            Breaker::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                true
            }
            // Tried while cooling down (every provider is, or the request is pinned there):
            // its answer is as fresh a verdict as the probe's, and closes the breaker; its
            // fault moves nothing.
            Breaker::Open { .. } => true,
            _ => false,
        };
        let seq = p.quota.reserve(p.quota_cost(want.cost));
        Lease {
            book: book.clone(),
            index: i,
            probe,
            seq,
            armed: true,
        }
    }

    /// Give back what [`HealthBook::lease`] took (the verdict, if any, is applied apart).
    fn release(&mut self, i: usize, probe: bool, seq: u64) {
        let p = &mut self.providers[i];
        p.in_flight = p.in_flight.saturating_sub(1);
        p.quota.settle(seq);
        if probe {
            if let Breaker::HalfOpen { probing, .. } = &mut p.breaker {
                // The probe ended without a verdict (cancelled, a 429, the caller's 400): the
                // next request probes instead.
                *probing = false;
            }
        }
    }

    /// Hand capacity to waiting requests, oldest first.
    pub(super) fn dispatch(&mut self, book: &Arc<Mutex<HealthBook>>, now: Instant) {
        if self.queue.waiters.is_empty() {
            return;
        }
        self.tick(now);
        let mut held = vec![false; self.providers.len()];
        let mut waiters = std::mem::take(&mut self.queue.waiters);
        let mut kept = VecDeque::with_capacity(waiters.len());
        while let Some(w) = waiters.pop_front() {
            if w.tx.is_closed() {
                // Its request is gone without leaving the queue (its task was dropped).
                continue;
            }
            if held.iter().all(|h| *h) || now > w.deadline {
                // Past its deadline a waiter is only waiting for its task to take it out and
                // say so (which a client that reads nothing can hold up for a minute): granted,
                // its lease sat unused while the requests behind it ran out of time.
                kept.push_back(w);
                continue;
            }
            match self.pick(&w.want, now, &held) {
                Some(i) => {
                    let lease = self.lease(book, i, &w.want, now);
                    if let Err(mut lease) = w.tx.send(lease) {
                        // Gone between the check and the send: undo here, under the lock the
                        // lease's own drop would need.
                        lease.armed = false;
                        self.release(lease.index, lease.probe, lease.seq);
                    }
                }
                None => {
                    // The waiter holds, for the ones behind it, the providers it waits for;
                    // not those it can never use (larger than that quota), nor those that only
                    // its own retry budget keeps it from: they are free for anybody's first
                    // attempt, and held they kept every new request off a provider for as long
                    // as a retry waited for the budget's window to move (up to 10 s, in a
                    // fault storm, one waiter after another). Nor those that cannot take it
                    // before its deadline (a quota refilling too late): it gives up first, and
                    // held, a provider free for the others stayed idle until it did.
                    let first_try = (!w.want.retry_at.is_empty()).then(|| Want {
                        retry_at: Vec::new(),
                        ..w.want.clone()
                    });
                    for &c in &w.want.candidates {
                        match self.availability(c, &w.want, now).0 {
                            Avail::Never => continue,
                            Avail::At(t) if t > w.deadline => continue,
                            _ => {}
                        }
                        if let Some(first) = &first_try {
                            if w.want.retry_at.contains(&c)
                                && self.availability(c, first, now).0 == Avail::Now
                            {
                                continue;
                            }
                        }
                        if let Some(h) = held.get_mut(c) {
                            *h = true;
                        }
                    }
                    kept.push_back(w);
                }
            }
        }
        self.queue.waiters = kept;
    }
}

/// What [`acquire`] could not do.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The client cancelled while waiting.
    Cancelled,
    /// No candidate can take the request within the wait allowed.
    NoCapacity {
        /// Why, per provider.
        reason: String,
        /// When the first one is expected back, if known.
        back_at: Option<Instant>,
        /// The request waited all the time it was allowed.
        timed_out: bool,
    },
}

/// A request in the queue, as the waiting task sees it.
pub struct Ticket {
    id: u64,
    rx: oneshot::Receiver<Lease>,
    /// When it expects capacity.
    pub eta: Option<Instant>,
    /// Why it waits.
    pub reason: String,
}

/// First step of acquiring: take a provider now, or join the queue (in the order requests
/// arrived: `since` is when this one did), or be refused at once.
pub fn try_acquire(
    book: &Arc<Mutex<HealthBook>>,
    want: &Want,
    since: Instant,
    deadline: Instant,
) -> Result<Result<Lease, Ticket>, Refusal> {
    let now = Instant::now();
    let mut b = lock(book);
    b.tick(now);
    if b.queue.is_empty() {
        if let Some(i) = b.pick(want, now, &[]) {
            return Ok(Ok(b.lease(book, i, want, now)));
        }
    }
    let (eta, reason) = match b.outlook(want, now) {
        Outlook::Never { reason } => {
            let back_at = None;
            return Err(Refusal::NoCapacity {
                reason,
                back_at,
                timed_out: false,
            });
        }
        Outlook::Wait {
            eta: Some(t),
            reason,
        } if t > deadline => {
            return Err(Refusal::NoCapacity {
                reason,
                back_at: Some(t),
                timed_out: false,
            })
        }
        Outlook::Wait { eta, reason } => (eta, reason),
        // Capacity exists, but others wait ahead of this request.
        Outlook::Ready => (None, "other requests are ahead in the queue".to_string()),
    };
    let (tx, rx) = oneshot::channel();
    let id = b.queue.push(want.clone(), since, deadline, tx);
    b.dispatch(book, now);
    Ok(Err(Ticket {
        id,
        rx,
        eta,
        reason,
    }))
}

/// How often a waiter looks again on its own, in case capacity returned in a way that did not
/// wake it (a retry budget's window sliding).
const RECHECK: Duration = Duration::from_secs(1);

impl Ticket {
    /// Wait for a grant until `wake`; then look again. `Ok(Some)` is a grant, `Ok(None)` means
    /// keep waiting (with `eta` and `reason` updated), `Err` means give up.
    pub async fn wait(
        &mut self,
        book: &Arc<Mutex<HealthBook>>,
        want: &Want,
        deadline: Instant,
    ) -> Result<Option<Lease>, Refusal> {
        let now = Instant::now();
        let wake = self
            .eta
            .map_or(now + RECHECK, |t| t.min(now + RECHECK))
            .min(deadline)
            .max(now);
        tokio::select! {
            r = &mut self.rx => return match r {
                Ok(lease) => Ok(Some(lease)),
                // The queue dropped us (it never does while we are in it): refuse plainly.
                Err(_) => Err(Refusal::NoCapacity {
                    reason: self.reason.clone(),
                    back_at: self.eta,
                    timed_out: false,
                }),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let refusal = {
            let mut b = lock(book);
            b.dispatch(book, now);
            match b.outlook(want, now) {
                _ if now >= deadline => Some(Refusal::NoCapacity {
                    reason: self.reason.clone(),
                    back_at: self.eta,
                    timed_out: true,
                }),
                Outlook::Never { reason } => Some(Refusal::NoCapacity {
                    reason,
                    back_at: None,
                    timed_out: false,
                }),
                Outlook::Wait {
                    eta: Some(t),
                    reason,
                } if t > deadline => Some(Refusal::NoCapacity {
                    reason,
                    back_at: Some(t),
                    timed_out: false,
                }),
                Outlook::Wait { eta, reason } => {
                    self.eta = eta;
                    self.reason = reason;
                    None
                }
                Outlook::Ready => {
                    self.eta = None;
                    None
                }
            }
        };
        match refusal {
            Some(r) => match self.leave(book) {
                Some(lease) => Ok(Some(lease)),
                None => Err(r),
            },
            None => match self.rx.try_recv() {
                Ok(lease) => Ok(Some(lease)),
                Err(_) => Ok(None),
            },
        }
    }

    /// Leave the queue. If a grant raced with leaving, it is returned: the caller may use it or
    /// drop it (which gives it back).
    pub fn leave(&mut self, book: &Arc<Mutex<HealthBook>>) -> Option<Lease> {
        let removed = {
            let mut b = lock(book);
            let removed = b.queue.remove(self.id);
            // Whatever this request held in the queue is free for the ones behind it.
            b.dispatch(book, Instant::now());
            removed
        };
        if removed {
            None
        } else {
            // Outside the lock: a lease dropped here takes the lock itself.
            self.rx.try_recv().ok()
        }
    }
}

/// Milliseconds or seconds, for reasons.
fn human_ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{} s", d.as_secs_f64().ceil() as u64)
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}
