//! One account rate limit shared by a fleet that does not coordinate.
//!
//! Every replica spends the same Segmind account, whose plan allows N calls
//! a minute (`segmind.rate_limit_per_minute`). Each replica paces its API
//! calls through a [`RateBudget`]:
//!
//! - **Pacing**: calls are spaced `1 / share` apart (a token bucket with a
//!   burst of one), so a replica never bursts its share into one second.
//! - **AIMD share**: the share starts at the whole limit. On a 429 (once per
//!   rate-limit window) it decreases to 80 % of what the replica actually
//!   used: the calls it made in the last minute (or of its share, if that is
//!   smaller). When every replica does so after the account's quota ran out,
//!   the shares add up to a little under the quota in one step, whatever the
//!   fleet's size. While calls succeed the share grows back by `limit / 40`
//!   per minute, so replicas with work take over what idle ones leave, and
//!   the fleet probes the limit again, as TCP flows share a link.
//! - **Coordinated shares**: with the fleet stream (`worker::fleet`, its
//!   usage exchange), replicas say every few seconds what they use and
//!   whether calls wait on their budget ([`RateBudget::usage`]); each then
//!   takes the fleet's
//!   target (96 % of the limit) less what the replicas that want no more
//!   use, split evenly among those that want more and itself
//!   ([`RateBudget::set_peers`], [`split`]). A replica that stops hearing
//!   from the stream falls back to its own AIMD share. A 429 in a window
//!   right after another window's 429 (other traffic on the account, not a
//!   one-off overfill as replicas join) cuts the fleet's target by a tenth,
//!   and the target grows back as the share does.
//! - **Reset**: a 429's `x-rate-limit-reset-at-utc` (or `Retry-After`) pauses
//!   every new call of the replica until then, plus a random jitter, so the
//!   fleet does not wake in one burst.
//! - **Priority**: polls and result fetches of jobs already paid for reserve
//!   the next free slot; a submission only takes a slot nobody reserved, so
//!   paid jobs finish first and never let a result expire.
//! - **Fair shares**: submissions waiting for a free slot are served by
//!   their job's [`Flow`] ([`fair::FairQueue`]): by lane weight among the
//!   lanes, round-robin by tenant weight within a lane, in order within a
//!   tenant. A bulk lane's backlog or one tenant's 30 long jobs delay
//!   another's submission by a slot or two, not by the backlog.
//! - **Intake**: [`RateBudget::intake_delay`] tells the consume loop when
//!   the budget is paused or reserved by paid calls beyond two intervals,
//!   so a worker with no budget stops taking deliveries instead of holding
//!   them. Submissions waiting in line do not stop intake: a delivery
//!   further back in the queue may be another tenant's, which the line
//!   serves before the backlog; the prefetch (at most a third of the
//!   minute's limit) bounds what a replica holds.
//!
//! Without a limit every call passes at once.

mod fair;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::job::Flow;
use crate::metrics::Metrics;
use fair::{FairQueue, Ticket};

/// Why a submission was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Withheld {
    #[error(
        "the tenant's credits of the day reached tenants.daily_credit_cap; nothing more was submitted"
    )]
    SpendCap,
    #[error("the job was cancelled by its producer; nothing more was submitted")]
    Cancelled,
}

/// What may stop a submission before it is paid (the fleet's spend caps
/// and cancellations, `worker::fleet`): asked when the submission arrives,
/// then, when its slot comes, right before the POST, the submission is
/// admitted (its expected cost reserved against the cap) or withheld.
pub trait Gate: Send + Sync {
    /// Whether the submission would be withheld now (nothing reserved).
    fn withheld(&self, flow: &Flow) -> Option<Withheld>;
    /// Admits the submission about to be sent, reserving its expected cost.
    fn admit(&self, flow: &Flow) -> Result<(), Withheld>;
    /// The admitted submission was answered without being accepted: its
    /// reservation is given back.
    fn release(&self, flow: &Flow);
}

/// Who is asking for a call; a submission says its job's [`Flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority<'a> {
    /// A poll or result fetch of a submitted (paid) job.
    Paid,
    /// A submission, a job's first part or a further one alike: each job
    /// has at most one waiting, so the line is shared by jobs.
    Submit(&'a Flow),
}

/// The replica's pacing of API calls against the account's limit.
pub struct RateBudget {
    /// Account limit, calls per second; `None` = unlimited.
    limit: Option<f64>,
    /// Asked before a submission takes its slot.
    gate: Option<Arc<dyn Gate>>,
    state: Mutex<State>,
    metrics: Metrics,
}

#[derive(Debug)]
struct State {
    /// This replica's current share, calls per second.
    share: f64,
    /// The earliest time the next call may go (the bucket's theoretical
    /// arrival time); reservations of paid calls push it forward.
    next_free: Instant,
    /// No call before this (a 429's reset time plus jitter).
    paused_until: Instant,
    last_growth: Instant,
    /// Submissions waiting for a slot, in their fair order.
    line: FairQueue,
    /// How each waiting submission is woken when it is served next.
    wakers: HashMap<Ticket, Arc<Notify>>,
    /// When this replica's calls of the last minute were made.
    recent: VecDeque<Instant>,
    /// When the current rate-limit window began, as far as this replica
    /// knows: its start, or the end of its last pause.
    window_start: Instant,
    /// What the fleet's replicas may use together, calls per second, while
    /// they coordinate.
    target: f64,
    /// What the other replicas last said, and when it was set.
    peers: Option<(Peers, Instant)>,
    /// When a 429 last came while coordinating.
    last_coordinated_429: Option<Instant>,
}

/// What the other replicas of the fleet are doing with the account, as
/// they last said through the fleet stream.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Peers {
    /// Replicas whose calls wait on their budget: they would use more.
    pub wanting: usize,
    /// Calls a second the others use (they want no more).
    pub idle_use: f64,
}

/// What this replica says of its budget ([`RateBudget::usage`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Calls a second over the last [`RECENT_SPAN`].
    pub per_second: f64,
    /// Whether calls wait on the budget (it would use more).
    pub wanting: bool,
}

impl State {
    /// Records a call made (or reserved) at `at`, and forgets calls older
    /// than the span a 429 looks back on: the record holds about a minute of
    /// calls, however long the replica runs between 429s.
    /// Wakes the submission now first in line (it may take the next free
    /// slot); a wake-up stored for one that is not waiting yet is kept.
    fn wake_head(&self) {
        if let Some(waker) = self.line.head().and_then(|t| self.wakers.get(&t)) {
            waker.notify_one();
        }
    }

    /// Whether the fleet's word is recent enough to split the target by.
    fn coordinated(&self, now: Instant) -> Option<Peers> {
        self.peers
            .filter(|(_, at)| now.saturating_duration_since(*at) <= PEERS_FRESH)
            .map(|(p, _)| p)
    }

    fn record(&mut self, at: Instant) {
        self.recent.push_back(at);
        if let Some(horizon) = Instant::now().checked_sub(USAGE_SPAN) {
            while self.recent.front().is_some_and(|t| *t < horizon) {
                self.recent.pop_front();
            }
        }
    }
}

/// Lowest share, as a fraction of the limit: a replica keeps making progress.
const MIN_SHARE: f64 = 0.02;
/// Growth of the share per minute of successful calls, as a fraction of the limit.
const GROWTH_PER_MINUTE: f64 = 1.0 / 40.0;
/// What a 429 leaves of the share (of the calls actually made).
const DECREASE: f64 = 0.8;
/// The span over which a replica counts its own calls.
const USAGE_SPAN: Duration = Duration::from_secs(60);
/// The span [`Usage::per_second`] is measured over: short, so a replica
/// that went quiet stops counting against the others within seconds.
pub const RECENT_SPAN: Duration = Duration::from_secs(10);
/// What coordinated replicas use together, as a fraction of the limit: a
/// margin for the stream's lag and a replica's first calls.
const COORDINATED_TARGET: f64 = 0.96;
/// What a 429 leaves of the coordinated target, when the window before
/// had one too.
const COORDINATED_DECREASE: f64 = 0.9;
/// A coordinated 429 within this of the last one is a repeated overfill.
const REPEATED_429: Duration = Duration::from_secs(150);
/// How long what the other replicas said holds without news.
pub const PEERS_FRESH: Duration = Duration::from_secs(15);
/// The longest pause a rate-limit answer can cause when its wait does not
/// fit the clock (the client clamps hints to `segmind.retry_max` first).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

impl RateBudget {
    /// Shares the submissions by lane weights (`lane_weights[i]` for lane
    /// `i`) and tenant weights (`party_weights`, unlisted: 1).
    pub fn set_shares(&mut self, lane_weights: Vec<u32>, party_weights: BTreeMap<String, u32>) {
        self.state().line = FairQueue::new(lane_weights, party_weights);
    }

    pub fn new(limit_per_minute: Option<u32>, metrics: Metrics) -> Self {
        let limit = limit_per_minute.map(|l| f64::from(l) / 60.0);
        let now = Instant::now();
        if let Some(l) = limit {
            metrics.rate_share.set(l * 60.0);
        }
        RateBudget {
            limit,
            gate: None,
            state: Mutex::new(State {
                share: limit.unwrap_or(0.0),
                next_free: now,
                paused_until: now,
                last_growth: now,
                line: FairQueue::default(),
                wakers: HashMap::new(),
                recent: VecDeque::new(),
                window_start: now,
                target: limit.unwrap_or(0.0) * COORDINATED_TARGET,
                peers: None,
                last_coordinated_429: None,
            }),
            metrics,
        }
    }

    /// Puts `gate` before every submission's slot.
    pub fn set_gate(&mut self, gate: Arc<dyn Gate>) {
        self.gate = Some(gate);
    }

    fn withheld(&self, flow: &Flow) -> Option<Withheld> {
        self.gate.as_ref().and_then(|g| g.withheld(flow))
    }

    fn admit(&self, flow: &Flow) -> Result<(), Withheld> {
        self.gate.as_ref().map_or(Ok(()), |g| g.admit(flow))
    }

    /// A submission admitted by [`RateBudget::acquire`] was answered
    /// without being accepted (an HTTP error): its reservation goes back.
    pub fn release(&self, flow: &Flow) {
        if let Some(gate) = &self.gate {
            gate.release(flow);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain numbers: a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this call's slot; a submission waits in line with its
    /// flow (see [`fair`]), unless the gate withholds it (when it arrives
    /// or when its slot comes).
    pub async fn acquire(&self, priority: Priority<'_>) -> Result<(), Withheld> {
        if let Priority::Submit(flow) = priority
            && let Some(withheld) = self.withheld(flow)
        {
            return Err(withheld);
        }
        if self.limit.is_none() {
            return match priority {
                Priority::Submit(flow) => self.admit(flow),
                Priority::Paid => Ok(()),
            };
        }
        match priority {
            Priority::Paid => {
                let slot = {
                    let mut s = self.state();
                    let slot = Instant::now().max(s.next_free).max(s.paused_until);
                    s.next_free = slot + interval(s.share);
                    s.record(slot);
                    slot
                };
                tokio::time::sleep_until(slot).await;
                Ok(())
            }
            Priority::Submit(flow) => {
                let waker = Arc::new(Notify::new());
                let place = {
                    let mut s = self.state();
                    let ticket = s.line.enqueue(flow);
                    s.wakers.insert(ticket, waker.clone());
                    InLine {
                        budget: self,
                        flow,
                        ticket,
                        served: false,
                    }
                };
                place.wait(&waker).await
            }
        }
    }

    /// A call was answered without a rate limit: grow the share.
    pub fn on_success(&self) {
        let Some(limit) = self.limit else { return };
        let mut s = self.state();
        let now = Instant::now();
        let dt = (now - s.last_growth).as_secs_f64().min(5.0);
        s.last_growth = now;
        if now < s.paused_until {
            return;
        }
        let growth = limit * GROWTH_PER_MINUTE * dt / 60.0;
        if let Some(peers) = s.coordinated(now) {
            s.target = (s.target + growth).min(limit * COORDINATED_TARGET);
            s.share = split(limit, s.target, peers);
        } else {
            s.share = (s.share + growth).min(limit);
        }
        self.metrics.rate_share.set(s.share * 60.0);
    }

    /// What the other replicas say they do (the fleet stream): while it is
    /// fresh, this replica's share is its [`split`] of the fleet's target.
    pub fn set_peers(&self, peers: Peers) {
        let Some(limit) = self.limit else { return };
        let mut s = self.state();
        let now = Instant::now();
        s.peers = Some((peers, now));
        let share = split(limit, s.target, peers);
        if (share - s.share).abs() > 1e-9 {
            debug!(
                share_per_minute = share * 60.0,
                wanting = peers.wanting,
                idle_per_minute = peers.idle_use * 60.0,
                "this replica's split of the fleet's rate limit"
            );
        }
        s.share = share;
        self.metrics.rate_share.set(s.share * 60.0);
    }

    /// The account's limit, calls a second; `None` = unlimited.
    pub fn limit_per_second(&self) -> Option<f64> {
        self.limit
    }

    /// What this replica does with its budget, to tell the others; `None`
    /// without a limit.
    pub fn usage(&self) -> Option<Usage> {
        self.limit?;
        let s = self.state();
        let now = Instant::now();
        let since = now.checked_sub(RECENT_SPAN);
        let calls = s
            .recent
            .iter()
            .rev()
            .take_while(|t| since.is_none_or(|since| **t >= since))
            .count();
        Some(Usage {
            per_second: calls as f64 / RECENT_SPAN.as_secs_f64(),
            wanting: s.line.head().is_some()
                || s.next_free.max(s.paused_until) > now + interval(s.share),
        })
    }

    /// A call was answered 429: cut the share to what was used (once per
    /// window) and pause new calls until the server's reset time, plus jitter.
    pub fn on_rate_limited(&self, reset_in: Option<Duration>) {
        let Some(limit) = self.limit else { return };
        let mut s = self.state();
        let now = Instant::now();
        let same_window = now < s.paused_until;
        if !same_window {
            // This replica's part of the window's quota: its calls since the
            // window began (at most a minute back), per minute.
            let since = match now.checked_sub(USAGE_SPAN) {
                Some(minute_ago) => s.window_start.max(minute_ago),
                None => s.window_start,
            };
            while s.recent.front().is_some_and(|t| *t < since) {
                s.recent.pop_front();
            }
            let used = s.recent.len() as f64 / USAGE_SPAN.as_secs_f64();
            if let Some(peers) = s.coordinated(now) {
                // A window overfilled once (replicas joining, a burst) costs
                // only the pause to its reset; windows overfilled one after
                // the other (other traffic on the account) cut the target.
                let repeated = s
                    .last_coordinated_429
                    .is_some_and(|at| now.saturating_duration_since(at) <= REPEATED_429);
                if repeated {
                    s.target = (s.target * COORDINATED_DECREASE).max(limit * MIN_SHARE);
                }
                s.last_coordinated_429 = Some(now);
                s.share = split(limit, s.target, peers);
            } else {
                s.share = (s.share.min(used) * DECREASE).max(limit * MIN_SHARE);
            }
            self.metrics.rate_share.set(s.share * 60.0);
        }
        let wait = reset_in.unwrap_or_else(|| interval(s.share));
        // Up to two of this replica's intervals, between 1 and 10 seconds.
        let spread = (2.0 * interval(s.share).as_secs_f64()).clamp(1.0, 10.0);
        let jitter = Duration::from_secs_f64(rand::rng().random_range(0.0..spread));
        // Checked: a hint is clamped by the client, but an Instant past the
        // clock's range would panic.
        let until = now
            .checked_add(wait.saturating_add(jitter))
            .unwrap_or(now + MAX_PAUSE);
        if until > s.paused_until {
            s.paused_until = until;
            s.window_start = until;
        }
        s.last_growth = s.paused_until;
        if !same_window {
            info!(
                share_per_minute = s.share * 60.0,
                pause_ms = (s.paused_until - now).as_millis() as u64,
                "Segmind rate limit hit: cutting this replica's share to what it used"
            );
        }
    }

    /// `None` when a new job could start submitting soon (the budget is
    /// neither paused nor reserved by paid calls beyond two intervals);
    /// else how long to wait before asking again.
    pub fn intake_delay(&self) -> Option<Duration> {
        self.limit?;
        let s = self.state();
        let now = Instant::now();
        let free = s.next_free.max(s.paused_until);
        let horizon = interval(s.share) * 2;
        if free <= now + horizon {
            None
        } else {
            Some((free.saturating_duration_since(now)).max(Duration::from_millis(50)))
        }
    }
}

/// A coordinated replica's share: the fleet's `target` less what the
/// replicas that want no more use, split evenly between those that want
/// more and this one (which may want more any moment), within
/// [`MIN_SHARE`] and the `limit`. Pure.
pub fn split(limit: f64, target: f64, peers: Peers) -> f64 {
    let idle = if peers.idle_use.is_finite() {
        peers.idle_use.max(0.0)
    } else {
        0.0
    };
    ((target - idle) / (peers.wanting as f64 + 1.0)).clamp(limit * MIN_SHARE, limit)
}

fn interval(share: f64) -> Duration {
    Duration::from_secs_f64(1.0 / share.max(1e-6))
}

/// A submission's place in line, for as long as it waits: given up (its
/// future dropped), it leaves the line and wakes the one now first.
struct InLine<'a> {
    budget: &'a RateBudget,
    flow: &'a Flow,
    ticket: Ticket,
    served: bool,
}

impl InLine<'_> {
    /// Waits to be first in line, then for the free slot, and takes it
    /// (unless the gate withholds it then: it leaves the line).
    async fn wait(mut self, waker: &Notify) -> Result<(), Withheld> {
        loop {
            let wait = {
                let mut s = self.budget.state();
                if s.line.head() != Some(self.ticket) {
                    None
                } else {
                    let now = Instant::now();
                    let free = s.next_free.max(s.paused_until);
                    if free <= now {
                        if let Err(withheld) = self.budget.admit(self.flow) {
                            self.leave(&mut s);
                            self.served = true;
                            return Err(withheld);
                        }
                        s.next_free = now + interval(s.share);
                        s.record(now);
                        s.line.serve();
                        self.served = true;
                        self.leave(&mut s);
                        return Ok(());
                    }
                    Some(free - now)
                }
            };
            match wait {
                // Woken when it becomes first.
                None => waker.notified().await,
                // First: the slot may be reserved further by paid calls, or
                // another may come first meanwhile; asked again then.
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = waker.notified() => {}
                    }
                }
            }
        }
    }

    fn leave(&self, s: &mut State) {
        s.wakers.remove(&self.ticket);
        if !self.served {
            s.line.remove(self.flow, self.ticket);
        }
        s.wake_head();
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if !self.served {
            let mut s = self.budget.state();
            self.leave(&mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn budget(limit: u32) -> RateBudget {
        RateBudget::new(Some(limit), Metrics::new())
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_of_recent_calls_stays_a_minute_long_between_429s() {
        let b = budget(50);
        // Two hours of calls at the whole limit, without a single 429.
        for _ in 0..6_000 {
            b.acquire(Priority::Submit(&Flow::default())).await.unwrap();
            b.on_success();
        }
        let held = b.state().recent.len();
        assert!(held <= 52, "{held} calls remembered; a minute holds 50");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_paced_at_the_share() {
        let b = budget(60);
        let start = Instant::now();
        for _ in 0..5 {
            b.acquire(Priority::Paid).await.unwrap();
        }
        // One a second: the first at once, the fifth four seconds later.
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_nothing_waits() {
        let b = RateBudget::new(None, Metrics::new());
        let start = Instant::now();
        for _ in 0..100 {
            b.acquire(Priority::Submit(&Flow::default())).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(b.intake_delay(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn paid_calls_go_before_waiting_submissions() {
        let b = std::sync::Arc::new(budget(60));
        b.acquire(Priority::Paid).await.unwrap(); // the slot of t = 0
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let (b1, o1) = (b.clone(), order.clone());
        tasks.spawn(async move {
            b1.acquire(Priority::Submit(&Flow::default()))
                .await
                .unwrap();
            o1.lock().unwrap().push("submit");
        });
        tokio::task::yield_now().await;
        for _ in 0..3 {
            let (b2, o2) = (b.clone(), order.clone());
            tasks.spawn(async move {
                b2.acquire(Priority::Paid).await.unwrap();
                o2.lock().unwrap().push("poll");
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(
            *order.lock().unwrap(),
            vec!["poll", "poll", "poll", "submit"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_cuts_the_share_to_what_was_used_once_per_window_and_pauses_until_the_reset() {
        let b = budget(60);
        // 20 calls in 20 s, while two other replicas spent the rest of the
        // account's quota: this replica's part was 20 a minute.
        for _ in 0..20 {
            b.acquire(Priority::Paid).await.unwrap();
        }
        let reset = Duration::from_secs(40);
        b.on_rate_limited(Some(reset));
        b.on_rate_limited(Some(reset));
        let share = b.metrics.rate_share.get();
        assert!(
            (share - 16.0).abs() < 1e-9,
            "80 % of the 20 used, once: {share}"
        );
        assert!(b.intake_delay().is_some(), "no intake while paused");
        let start = Instant::now();
        b.acquire(Priority::Paid).await.unwrap();
        let waited = start.elapsed();
        // The reset, plus a jitter below two intervals of the new share (7.5 s).
        assert!(
            waited >= reset && waited < reset + Duration::from_secs_f64(7.5),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_clocks_range_pauses_at_most_an_hour() {
        let b = budget(60);
        b.acquire(Priority::Paid).await.unwrap();
        b.on_rate_limited(Some(Duration::MAX));
        let start = Instant::now();
        b.acquire(Priority::Paid).await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= MAX_PAUSE && waited <= MAX_PAUSE + Duration::from_secs(10),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_calls_of_the_current_window_count_as_used() {
        let b = budget(60);
        for _ in 0..20 {
            b.acquire(Priority::Paid).await.unwrap();
        }
        b.on_rate_limited(Some(Duration::from_secs(40)));
        // The next window: 5 calls, then the quota is gone again.
        for _ in 0..5 {
            b.acquire(Priority::Paid).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.on_rate_limited(Some(Duration::from_secs(30)));
        let share = b.metrics.rate_share.get();
        assert!(
            (share - 4.0).abs() < 1e-9,
            "80 % of the 5 calls of this window: {share}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_used_its_whole_share_gives_up_a_fifth() {
        let b = budget(60);
        for _ in 0..61 {
            b.acquire(Priority::Paid).await.unwrap(); // one a second for a minute
        }
        b.on_rate_limited(Some(Duration::from_secs(1)));
        let share = b.metrics.rate_share.get();
        assert!((share - 48.0).abs() < 1.0, "{share}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_share_grows_back_while_calls_succeed() {
        let b = budget(40);
        b.on_rate_limited(Some(Duration::from_secs(1)));
        // Nothing was used: the floor, 2 % of the limit.
        assert!((b.metrics.rate_share.get() - 0.8).abs() < 1e-9);
        tokio::time::sleep(Duration::from_secs(15)).await; // past the reset and its jitter
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.on_success();
        }
        // Ten minutes at 1/40 of the limit a minute: 0.8 + 10 a minute.
        let share = b.metrics.rate_share.get();
        assert!((share - 10.8).abs() < 0.2, "{share}");
    }

    #[test]
    fn coordinated_replicas_split_the_target_and_leave_what_idle_ones_use() {
        let limit = 1.0; // 60 a minute
        let target = limit * COORDINATED_TARGET;
        let alone = Peers::default();
        assert!((split(limit, target, alone) - 0.96).abs() < 1e-9);
        // Three busy replicas: a third each, 96 % of the limit together.
        let busy = Peers {
            wanting: 2,
            idle_use: 0.0,
        };
        assert!((3.0 * split(limit, target, busy) - 0.96).abs() < 1e-9);
        // A quiet one using 0.16 a second leaves the rest to the two busy.
        let quiet = Peers {
            wanting: 1,
            idle_use: 0.16,
        };
        assert!((split(limit, target, quiet) - 0.4).abs() < 1e-9);
        // However many replicas or whatever they say: the floor, the limit.
        let crowd = Peers {
            wanting: 10_000,
            idle_use: f64::NAN,
        };
        assert_eq!(split(limit, target, crowd), limit * MIN_SHARE);
        let odd = Peers {
            wanting: 0,
            idle_use: -5.0,
        };
        assert_eq!(split(limit, target, odd), 0.96);
    }

    #[tokio::test(start_paused = true)]
    async fn a_coordinated_replica_paces_at_its_split_until_the_fleet_goes_quiet() {
        let b = budget(60);
        b.set_peers(Peers {
            wanting: 2,
            idle_use: 0.0,
        });
        // 96 % of 60 a minute over three: 19.2 a minute, 3.125 s apart.
        assert!((b.metrics.rate_share.get() - 19.2).abs() < 1e-9);
        let start = Instant::now();
        for _ in 0..5 {
            b.acquire(Priority::Paid).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_millis(12_500));
        // Successes do not grow a coordinated share past its split…
        b.set_peers(Peers {
            wanting: 2,
            idle_use: 0.0,
        });
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.on_success();
        }
        assert!((b.metrics.rate_share.get() - 19.2).abs() < 1e-9);
        // …until the fleet has said nothing for a while: then it grows on
        // its own (AIMD), 1/40 of the limit a minute.
        tokio::time::sleep(PEERS_FRESH).await;
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.on_success();
        }
        let share = b.metrics.rate_share.get();
        assert!((share - 20.7).abs() < 0.1, "{share}");
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_429s_cut_a_coordinated_fleets_target_by_a_tenth_a_one_off_does_not() {
        let b = budget(60);
        let busy = Peers {
            wanting: 1,
            idle_use: 0.0,
        };
        b.set_peers(busy);
        assert!((b.metrics.rate_share.get() - 28.8).abs() < 1e-9);
        // A window overfilled once (replicas joining): only the pause.
        b.on_rate_limited(Some(Duration::from_secs(20)));
        assert!((b.metrics.rate_share.get() - 28.8).abs() < 1e-9);
        // The next window overfilled too: other traffic; cut once for it.
        tokio::time::sleep(Duration::from_secs(30)).await;
        b.set_peers(busy);
        b.on_rate_limited(Some(Duration::from_secs(20)));
        b.on_rate_limited(Some(Duration::from_secs(20)));
        assert!((b.metrics.rate_share.get() - 25.92).abs() < 1e-9);
        // It grows back while calls succeed, to 96 % at most.
        tokio::time::sleep(Duration::from_secs(30)).await;
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.set_peers(busy);
            b.on_success();
        }
        assert!((b.metrics.rate_share.get() - 28.8).abs() < 1e-9);
        // Long after: a one-off again.
        b.on_rate_limited(Some(Duration::from_secs(20)));
        assert!((b.metrics.rate_share.get() - 28.8).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_says_what_the_last_seconds_used_and_whether_calls_wait() {
        let b = budget(60);
        for _ in 0..3 {
            b.acquire(Priority::Paid).await.unwrap();
        }
        // Three calls in the last 10 s; the next slot is a second away.
        let u = b.usage().unwrap();
        assert!((u.per_second - 0.3).abs() < 1e-9, "{u:?}");
        assert!(!u.wanting);
        // Paid calls reserved beyond the next slot: calls wait.
        for _ in 0..3 {
            let _ = b.acquire(Priority::Paid).now_or_never();
        }
        assert!(b.usage().unwrap().wanting);
        // Quiet for longer than the span: nothing used.
        tokio::time::sleep(RECENT_SPAN * 2).await;
        let u = b.usage().unwrap();
        assert_eq!(u.per_second, 0.0);
        assert!(RateBudget::new(None, Metrics::new()).usage().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_a_fleet_told_the_same_reset() {
        let fleet: Vec<RateBudget> = (0..20).map(|_| budget(50)).collect();
        let mut wakes = Vec::new();
        for b in &fleet {
            b.on_rate_limited(Some(Duration::from_secs(10)));
            wakes.push(b.state().paused_until);
        }
        wakes.sort();
        wakes.dedup();
        assert!(
            wakes.len() >= 15,
            "{} distinct wake times of 20",
            wakes.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn submissions_waiting_in_line_do_not_stop_intake() {
        let b = std::sync::Arc::new(budget(6)); // one call per 10 s
        b.acquire(Priority::Submit(&Flow::default())).await.unwrap(); // the slot of t = 0
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(
                    async move { b.acquire(Priority::Submit(&Flow::default())).await.unwrap() },
                )
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiting.iter().all(|w| !w.is_finished()));
        assert_eq!(
            b.intake_delay(),
            None,
            "another tenant's job further back may go first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn intake_stops_while_submissions_wait_and_resumes_when_the_budget_frees() {
        let b = std::sync::Arc::new(budget(6)); // one call per 10 s
        assert_eq!(b.intake_delay(), None);
        // Three polls reserve the slots at 0, 10 and 20 s.
        for _ in 0..3 {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::Paid).await.unwrap() });
        }
        tokio::task::yield_now().await;
        assert!(
            b.intake_delay().is_some(),
            "the next free slot is 30 s away"
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(b.intake_delay(), None, "free within two intervals");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenants_backlog_does_not_delay_another_by_more_than_its_share() {
        let b = std::sync::Arc::new(budget(60)); // one call a second
        let served = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let flow = |party: &str| Flow {
            lane: 0,
            party: Arc::from(party),
            ..Flow::default()
        };
        for (party, n) in [("a", 30), ("b", 10)] {
            for _ in 0..n {
                let (b, served, flow) = (b.clone(), served.clone(), flow(party));
                tasks.spawn(async move {
                    b.acquire(Priority::Submit(&flow)).await.unwrap();
                    served.lock().unwrap().push((party, Instant::now()));
                });
                tokio::task::yield_now().await;
            }
        }
        // One of them is given up while it waits: the line goes on.
        let given_up = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(Priority::Submit(&flow("c"))).await })
        };
        tokio::task::yield_now().await;
        given_up.abort();
        let start = Instant::now();
        while tasks.join_next().await.is_some() {}
        let served = served.lock().unwrap();
        assert_eq!(served.len(), 40);
        let last_b = served.iter().rposition(|(p, _)| *p == "b").unwrap();
        // A's first took the free slot before B's arrived; of the slots
        // after, B had every other one.
        assert!(last_b <= 20, "B's 10 were served by slot {last_b}");
        let (_, at) = served[last_b];
        assert!(at - start <= Duration::from_secs(20), "{:?}", at - start);
        assert_eq!(b.intake_delay(), None);
    }
}
