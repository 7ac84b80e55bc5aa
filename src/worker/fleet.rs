//! The fleet's shared memory, on the broker every deployment already runs:
//! a RabbitMQ stream (`fleet.stream`, `x-queue-type: stream`) that every
//! replica appends to and tails over AMQP 0-9-1 (`x-stream-offset`).
//!
//! - **Spend**: every paid part's cost, with its tenant and UTC day
//!   ([`Fleet::book`]). Each replica keeps the fleet's totals per tenant and
//!   day ([`Ledger`]); a tenant past `tenants.daily_credit_cap` has its next
//!   submission withheld by the rate budget's gate, right before the POST.
//! - **Cancellations**: producers publish `{"job_id": …}` to the control
//!   exchange (`fleet.control_exchange`, fanout, bound to the stream); a
//!   cancelled job's next submission is withheld, whichever replica holds
//!   it. With tenants, the cancel's broker-validated `user_id` names the
//!   tenant: a producer cancels only its own jobs.
//! - **Priors**: what a replica's polling learned (`PollSchedule::snapshot`)
//!   and the speaking rates its quality gate learned
//!   ([`SpeakingRate::snapshot`]), every `fleet.publish_interval`. A replica
//!   that has learned little of its own starts from the newest snapshot it
//!   reads (it replays `fleet.replay` back at start), so its first jobs are
//!   polled and judged like a warm replica's.
//!
//! - **Usage**: what a replica does with the account's rate limit
//!   ([`RateBudget::usage`]): calls a second lately and whether calls wait
//!   on its budget, every [`USAGE_INTERVAL`] and at once when that changes.
//!   Not kept in the stream (a new replica needs only the last seconds):
//!   published to the `{stream}.usage` fanout exchange, which every
//!   replica reads through a queue of its own for the session. Each replica
//!   splits the fleet's target among the replicas that say they want more
//!   ([`RateBudget::set_peers`]), instead of each finding its share by
//!   429s, while its own word comes back to it (the exchange round-trips).
//!
//! Records a worker appends carry its own RabbitMQ user as the validated
//! `user_id`; records with another `user_id` (a producer writing to the
//! stream) are ignored. Only messages through the control exchange are read
//! as cancellations.
//!
//! The overspend bound: a cap is checked against what this replica has
//! read; a part is booked once its result (and cost) is fetched. So past
//! the cap the fleet may still pay for the parts already submitted (at most
//! one per job in flight) plus what is booked elsewhere but not yet read
//! here (the stream's lag, well under a second on a healthy broker, times
//! the fleet's spend rate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::Publisher;
use crate::config::{Settings, TenantIdentity};
use crate::job::{Flow, JobId, Tenant, Voice};
use crate::metrics::Metrics;
use crate::quality::{LearnedRate, SpeakingRate};
use crate::segmind::SegmindClient;
use crate::segmind::budget::{Gate, PEERS_FRESH, Peers, RateBudget, Usage, Withheld};
use crate::spoken::Script;

/// Jobs of its own a replica's polling must have learned from before it
/// publishes what it learned, and below which it starts from another's.
const MIN_LEARNED: u64 = 16;
/// Records waiting to be appended while the broker is away.
const OUTBOX: usize = 4096;
/// How often a busy replica says what it uses of the rate limit.
pub const USAGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a replica looks at its own usage (and tells at once when it
/// starts or stops wanting more).
const USAGE_CHECK: Duration = Duration::from_secs(1);
/// A usage record older than this by its sender's clock is not news.
const USAGE_TOO_OLD: Duration = Duration::from_secs(60);

/// Where records go: the stream, or the usage exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Stream,
    Usage,
}

/// A record a worker appends to the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    /// Credits a tenant spent (or, negative, did not: a reservation given
    /// back or corrected by the part's actual cost).
    Spend {
        tenant: String,
        day: NaiveDate,
        credits: f64,
        /// A part's actual cost, when this record books one: every replica
        /// reserves that much for each submission of a capped tenant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part_cost: Option<f64>,
        job_id: String,
        source: String,
    },
    /// What a replica learned: its polling's (text characters, latency
    /// seconds) and its voices' speaking rates.
    Priors {
        source: String,
        #[serde(default)]
        polls: Vec<(f64, f64)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rates: Vec<SharedRate>,
    },
    /// Appended by a replica when it starts tailing: reading it back means
    /// it has read everything before (caught up).
    Hello { source: String, nonce: String },
    /// What a replica does with the account's rate limit (on the usage
    /// exchange, not the stream).
    Usage {
        source: String,
        at: DateTime<Utc>,
        /// Calls a minute, lately.
        per_minute: f64,
        /// Whether calls wait on its budget (it would use more).
        wanting: bool,
        /// Its first word: the others tell theirs at once.
        #[serde(default)]
        starting: bool,
    },
}

/// A voice's (or pair's) speaking rate in a script, as a record carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SharedRate {
    voice: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voice_2: Option<String>,
    script: String,
    /// Characters a second of its recent takes, oldest first.
    observations: Vec<f64>,
}

impl From<&LearnedRate> for SharedRate {
    fn from(l: &LearnedRate) -> Self {
        SharedRate {
            voice: l.voices.0.to_owned(),
            voice_2: l.voices.1.map(str::to_owned),
            script: l.script.name().to_owned(),
            observations: l.observations.clone(),
        }
    }
}

impl SharedRate {
    /// The domain's view; `None` for a voice or script this release does
    /// not know (a newer replica's).
    fn learned(self) -> Option<LearnedRate> {
        let voice = |name: &str| Voice::parse(name).ok().map(Voice::name);
        let voice_2 = match &self.voice_2 {
            Some(name) => Some(voice(name)?),
            None => None,
        };
        Some(LearnedRate {
            voices: (voice(&self.voice)?, voice_2),
            script: Script::from_name(&self.script)?,
            observations: self.observations,
        })
    }
}

/// A producer's cancellation, as published to the control exchange.
#[derive(Debug, Deserialize)]
struct Cancel {
    job_id: String,
}

/// What the fleet's records say: spending per tenant and UTC day, and the
/// jobs cancelled. Pure.
#[derive(Debug, Default)]
pub struct Ledger {
    spent: HashMap<(String, NaiveDate), f64>,
    cancelled: HashMap<String, DateTime<Utc>>,
    /// The last part cost booked in the fleet: what a submission reserves.
    part_cost: f64,
    /// Reservations of submissions not yet booked, per job, oldest first.
    reserved: HashMap<String, std::collections::VecDeque<(NaiveDate, f64)>>,
}

impl Ledger {
    /// Adds `credits` (negative: gives back) to `tenant`'s `day`.
    pub fn spend(&mut self, tenant: &str, day: NaiveDate, credits: f64) {
        if credits.is_finite() {
            *self.spent.entry((tenant.to_owned(), day)).or_default() += credits;
        }
    }

    /// Reserves the expected cost of `job`'s submission; what was reserved.
    pub fn reserve(&mut self, tenant: &str, job: &str, day: NaiveDate) -> f64 {
        let estimate = self.part_cost;
        self.spend(tenant, day, estimate);
        self.reserved
            .entry(job.to_owned())
            .or_default()
            .push_back((day, estimate));
        estimate
    }

    /// Gives back `job`'s newest reservation (its submission was refused);
    /// the day and credits given back.
    pub fn unreserve(&mut self, tenant: &str, job: &str) -> Option<(NaiveDate, f64)> {
        let queue = self.reserved.get_mut(job)?;
        let (day, credits) = queue.pop_back()?;
        if queue.is_empty() {
            self.reserved.remove(job);
        }
        self.spend(tenant, day, -credits);
        Some((day, -credits))
    }

    /// Books a paid part's actual `cost` for `job`, in place of its oldest
    /// reservation; the credits added (the correction).
    pub fn settle(
        &mut self,
        tenant: &str,
        job: &str,
        day: NaiveDate,
        cost: f64,
    ) -> (NaiveDate, f64) {
        self.part_cost = cost;
        let reserved = self.reserved.get_mut(job).and_then(|q| q.pop_front());
        if self.reserved.get(job).is_some_and(|q| q.is_empty()) {
            self.reserved.remove(job);
        }
        let (day, delta) = match reserved {
            Some((day, estimate)) => (day, cost - estimate),
            None => (day, cost),
        };
        self.spend(tenant, day, delta);
        (day, delta)
    }

    pub fn spent(&self, tenant: &str, day: NaiveDate) -> f64 {
        self.spent
            .get(&(tenant.to_owned(), day))
            .copied()
            .unwrap_or(0.0)
    }

    pub fn cancel(&mut self, job: &str, at: DateTime<Utc>) {
        self.cancelled.insert(job.to_owned(), at);
    }

    /// Whether `job` was cancelled within `window` of `now`.
    pub fn is_cancelled(&self, job: &str, now: DateTime<Utc>, window: chrono::Duration) -> bool {
        self.cancelled
            .get(job)
            .is_some_and(|at| now.signed_duration_since(*at) <= window)
    }

    /// Forgets days before `today` and cancellations older than `window`.
    pub fn prune(&mut self, today: NaiveDate, now: DateTime<Utc>, window: chrono::Duration) {
        self.spent.retain(|(_, day), _| *day >= today);
        // A reservation a part never settled here (its job was handed to
        // another replica, or failed before its result) is kept for its
        // day only.
        self.reserved.retain(|_, q| {
            q.retain(|(day, _)| *day >= today);
            !q.is_empty()
        });
        self.cancelled
            .retain(|_, at| now.signed_duration_since(*at) <= window);
    }
}

/// This replica's view of the fleet, and its way of appending to it.
pub struct Fleet {
    ledger: Mutex<Ledger>,
    cap: Option<f64>,
    /// How long a cancellation holds (the resume window: a resend after
    /// it is a new request).
    cancel_window: chrono::Duration,
    /// This replica, in its records (its own are not applied twice).
    source: String,
    stream: Option<String>,
    control_exchange: String,
    replay: Duration,
    publish_interval: Duration,
    /// The worker's RabbitMQ user: the `user_id` its records carry.
    worker_user: String,
    tenants: TenantIdentity,
    max_job_id_len: usize,
    outbox: mpsc::Sender<(Destination, Vec<u8>)>,
    pending: tokio::sync::Mutex<mpsc::Receiver<(Destination, Vec<u8>)>>,
    /// The next stream offset to read (0: start from the replay window).
    next_offset: AtomicU64,
    records: prometheus::IntCounterVec,
    /// True once the tail has read the stream up to its start.
    caught_up: tokio::sync::watch::Sender<bool>,
    /// The nonce of the hello this replica waits to read back.
    hello: Mutex<Option<String>>,
    /// What the other replicas last said of their rate-limit usage.
    peers: Mutex<HashMap<String, Peer>>,
    /// When this replica last heard its own usage back.
    heard_self: Mutex<Option<tokio::time::Instant>>,
    /// Until then this replica, starting, says it wants more.
    starting_until: Mutex<Option<tokio::time::Instant>>,
}

/// A replica's last [`Record::Usage`], as heard here.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// When it was heard, by this replica's clock (not the sender's).
    heard: tokio::time::Instant,
    per_second: f64,
    wanting: bool,
}

/// The other replicas heard within [`PEERS_FRESH`] of `now`; what one says
/// it uses counts within `0..=limit` (calls a second). Pure.
fn peers_view(peers: &HashMap<String, Peer>, now: tokio::time::Instant, limit: f64) -> Peers {
    peers
        .values()
        .filter(|p| now.saturating_duration_since(p.heard) <= PEERS_FRESH)
        .fold(Peers::default(), |mut view, p| {
            if p.wanting {
                view.wanting += 1;
            } else if p.per_second.is_finite() {
                view.idle_use += p.per_second.clamp(0.0, limit);
            }
            view
        })
}

impl Fleet {
    pub fn new(settings: &Settings, source: String, metrics: &Metrics) -> Arc<Self> {
        let (outbox, pending) = mpsc::channel(OUTBOX);
        let worker_user = settings
            .amqp
            .url
            .expose_secret()
            .parse::<lapin::uri::AMQPUri>()
            .map(|u| u.authority.userinfo.username)
            .unwrap_or_else(|_| "guest".to_owned());
        Arc::new(Fleet {
            ledger: Mutex::new(Ledger::default()),
            cap: settings.tenants.daily_credit_cap,
            cancel_window: chrono::Duration::from_std(settings.jobs.resume_window)
                .unwrap_or(chrono::Duration::hours(1)),
            source,
            stream: settings.fleet.stream.clone(),
            control_exchange: settings.fleet.control_exchange.clone(),
            replay: settings.fleet.replay,
            publish_interval: settings.fleet.publish_interval,
            worker_user,
            tenants: settings.tenants.identity,
            max_job_id_len: settings.limits.max_job_id_len,
            outbox,
            pending: tokio::sync::Mutex::new(pending),
            next_offset: AtomicU64::new(0),
            records: metrics.fleet_records.clone(),
            caught_up: tokio::sync::watch::Sender::new(false),
            hello: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            heard_self: Mutex::new(None),
            starting_until: Mutex::new(None),
        })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Plain numbers: a panic elsewhere cannot leave them torn.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Books a paid part's actual `cost` for the job's tenant (in place of
    /// the reservation its submission made): counted here at once, appended
    /// to the stream for the others.
    pub fn book(&self, flow: &Flow, cost: f64) {
        if !cost.is_finite() || cost < 0.0 {
            return;
        }
        let (day, credits) =
            self.ledger()
                .settle(&flow.party, &flow.job, Utc::now().date_naive(), cost);
        self.append_spend(flow, day, credits, Some(cost));
    }

    fn append_spend(&self, flow: &Flow, day: NaiveDate, credits: f64, part_cost: Option<f64>) {
        if self.stream.is_none() || (credits == 0.0 && part_cost.is_none()) {
            return;
        }
        self.append(&Record::Spend {
            tenant: flow.party.to_string(),
            day,
            credits,
            part_cost,
            job_id: flow.job.to_string(),
            source: self.source.clone(),
        });
    }

    fn append(&self, record: &Record) {
        self.send(Destination::Stream, record);
    }

    fn send(&self, to: Destination, record: &Record) {
        match serde_json::to_vec(record) {
            Ok(body) => {
                if self.outbox.try_send((to, body)).is_err() {
                    warn!("the fleet stream's outbox is full; a record is dropped");
                }
            }
            Err(e) => warn!(error = %e, "could not encode a fleet record"),
        }
    }

    /// Applies one message read from the stream.
    fn read(&self, properties: &BasicProperties, exchange: &str, body: &[u8], learning: &Learning) {
        if exchange == self.control_exchange {
            let kind = if self.read_cancel(properties, body) {
                "cancel"
            } else {
                "ignored"
            };
            self.records.with_label_values(&[kind]).inc();
            return;
        }
        let from_worker = properties
            .user_id()
            .as_ref()
            .is_some_and(|u| u.as_str() == self.worker_user);
        if !from_worker {
            debug!("a fleet record not written by a worker is ignored");
            self.records.with_label_values(&["ignored"]).inc();
            return;
        }
        let record = serde_json::from_slice::<Record>(body);
        let kind = match &record {
            Ok(Record::Spend { .. }) => "spend",
            Ok(Record::Priors { .. }) => "priors",
            Ok(Record::Hello { .. }) => "hello",
            Ok(Record::Usage { .. }) => "usage",
            Err(_) => "ignored",
        };
        self.records.with_label_values(&[kind]).inc();
        match record {
            Ok(Record::Spend {
                tenant,
                day,
                credits,
                part_cost,
                source,
                ..
            }) if source != self.source => {
                let mut ledger = self.ledger();
                ledger.spend(&tenant, day, credits);
                if let Some(cost) = part_cost.filter(|c| c.is_finite() && *c >= 0.0) {
                    ledger.part_cost = cost;
                }
            }
            Ok(Record::Priors {
                source,
                polls,
                rates: shared,
            }) if source != self.source => {
                if learning.client.schedule().seed(&polls, MIN_LEARNED) {
                    info!(
                        from = %source,
                        samples = polls.len(),
                        "polling starts from what another replica learned"
                    );
                }
                let learned: Vec<LearnedRate> =
                    shared.into_iter().filter_map(SharedRate::learned).collect();
                let seeded = learning.rates.seed(&learned);
                if seeded > 0 {
                    info!(
                        from = %source,
                        voices = seeded,
                        "speaking rates start from what another replica learned"
                    );
                }
            }
            Ok(Record::Usage { source, .. }) if source == self.source => {
                *self
                    .heard_self
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(tokio::time::Instant::now());
                self.split_budget(learning.client.budget());
            }
            Ok(Record::Usage {
                source,
                at,
                per_minute,
                wanting,
                starting,
            }) => {
                let old = chrono::Duration::from_std(USAGE_TOO_OLD).unwrap_or_default();
                if Utc::now() - at > old {
                    debug!(from = %source, "an old usage record is ignored");
                    return;
                }
                if starting && let Some(usage) = learning.client.budget().usage() {
                    // Answered at once: it learns the fleet before it
                    // consumes (it waits for the stream's catch-up). A
                    // replica itself starting says it wants more.
                    let held = self
                        .starting_until
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_some_and(|until| tokio::time::Instant::now() < until);
                    let usage = Usage {
                        wanting: usage.wanting || held,
                        ..usage
                    };
                    self.send(Destination::Usage, &self.usage_record(usage, false));
                }
                let peer = Peer {
                    heard: tokio::time::Instant::now(),
                    per_second: per_minute / 60.0,
                    wanting,
                };
                self.peers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(source, peer);
                self.split_budget(learning.client.budget());
            }
            Ok(Record::Hello { source, nonce }) if source == self.source => {
                let mine = self
                    .hello
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_deref()
                    == Some(nonce.as_str());
                if mine {
                    self.caught_up.send_replace(true);
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "an unreadable fleet record is ignored"),
        }
    }

    /// Tells this replica's usage when it is worth telling, forgets the
    /// replicas gone quiet and splits the budget by what the others said.
    fn tell_usage(&self, budget: &RateBudget, told: &mut Told) {
        let Some(usage) = budget.usage() else { return };
        let now = tokio::time::Instant::now();
        if told.due(usage, now) {
            self.tell(usage, false, told);
        }
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, p| now.saturating_duration_since(p.heard) <= PEERS_FRESH);
        self.split_budget(budget);
    }

    fn usage_record(&self, usage: Usage, starting: bool) -> Record {
        Record::Usage {
            source: self.source.clone(),
            at: Utc::now(),
            per_minute: usage.per_second * 60.0,
            wanting: usage.wanting,
            starting,
        }
    }

    /// Sends `usage` as this replica's word.
    fn tell(&self, usage: Usage, starting: bool, told: &mut Told) {
        self.send(Destination::Usage, &self.usage_record(usage, starting));
        let now = tokio::time::Instant::now();
        *told = Told {
            wanting: Some(usage.wanting),
            at: Some(now),
            hold_until: told.hold_until,
        };
    }

    /// Splits `budget` by what the other replicas said, while this
    /// replica's own word comes back (the exchange round-trips); else the
    /// budget, left without news, falls back to its own share.
    fn split_budget(&self, budget: &RateBudget) {
        let Some(limit) = budget.limit_per_second() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let heard = *self
            .heard_self
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if heard.is_none_or(|at| now.saturating_duration_since(at) > PEERS_FRESH) {
            return;
        }
        let view = peers_view(
            &self.peers.lock().unwrap_or_else(PoisonError::into_inner),
            now,
            limit,
        );
        budget.set_peers(view);
    }

    /// Reads a cancellation; whether it was one.
    fn read_cancel(&self, properties: &BasicProperties, body: &[u8]) -> bool {
        let Ok(cancel) = serde_json::from_slice::<Cancel>(body) else {
            warn!("a cancellation that is not {{\"job_id\": …}} is ignored");
            return false;
        };
        let Ok(mut job) = JobId::parse(&cancel.job_id, self.max_job_id_len) else {
            warn!("a cancellation naming no valid job id is ignored");
            return false;
        };
        if self.tenants == TenantIdentity::UserId {
            // A tenant cancels only its own jobs: its validated user_id
            // names the namespace the job id is looked up in.
            let tenant = properties
                .user_id()
                .as_ref()
                .and_then(|u| Tenant::parse(u.as_str()).ok());
            let Some(tenant) = tenant else {
                warn!("a cancellation without a tenant's user_id is ignored");
                return false;
            };
            job = job.within(&tenant);
        }
        let at = properties
            .timestamp()
            .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            // A producer's clock is not trusted into the future.
            .map_or_else(Utc::now, |at| at.min(Utc::now()));
        info!(job_id = job.as_str(), "job cancelled by its producer");
        self.ledger().cancel(job.as_str(), at);
        true
    }

    /// Where a (re)started tail begins: after the last record read, else
    /// the replay window or the start of the UTC day, whichever is earlier
    /// (the day's spending must be read whole).
    fn start_offset(&self) -> AMQPValue {
        match self.next_offset.load(Ordering::Relaxed) {
            0 => {
                let now = Utc::now();
                let midnight = now
                    .date_naive()
                    .and_hms_opt(0, 0, 0)
                    .map_or(now, |m| m.and_utc());
                let replay = chrono::Duration::from_std(self.replay).unwrap_or_default();
                let from = midnight.min(now - replay);
                AMQPValue::Timestamp(u64::try_from(from.timestamp()).unwrap_or(0))
            }
            next => AMQPValue::LongLongInt(i64::try_from(next).unwrap_or(i64::MAX)),
        }
    }
}

impl Fleet {
    /// Waits until the tail has read what the stream held when it started
    /// (the day's spending, cancellations, priors), at most `within`;
    /// whether it has. Without a stream, at once.
    pub async fn caught_up(&self, within: Duration) -> bool {
        if self.stream.is_none() {
            return true;
        }
        let mut rx = self.caught_up.subscribe();
        tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn check(&self, ledger: &Ledger, flow: &Flow, now: DateTime<Utc>) -> Option<Withheld> {
        if ledger.is_cancelled(&flow.job, now, self.cancel_window) {
            return Some(Withheld::Cancelled);
        }
        let cap = self.cap?;
        (ledger.spent(&flow.party, now.date_naive()) >= cap).then_some(Withheld::SpendCap)
    }
}

impl Gate for Fleet {
    fn withheld(&self, flow: &Flow) -> Option<Withheld> {
        self.check(&self.ledger(), flow, Utc::now())
    }

    /// Checked and reserved under one lock: two submissions of a tenant at
    /// its cap's edge cannot both pass on the same credits.
    fn admit(&self, flow: &Flow) -> Result<(), Withheld> {
        let now = Utc::now();
        let reserved = {
            let mut ledger = self.ledger();
            if let Some(withheld) = self.check(&ledger, flow, now) {
                return Err(withheld);
            }
            if self.cap.is_none() {
                return Ok(());
            }
            ledger.reserve(&flow.party, &flow.job, now.date_naive())
        };
        self.append_spend(flow, now.date_naive(), reserved, None);
        Ok(())
    }

    fn release(&self, flow: &Flow) {
        let given_back = self.ledger().unreserve(&flow.party, &flow.job);
        if let Some((day, credits)) = given_back {
            self.append_spend(flow, day, credits, None);
        }
    }
}

/// What a replica learns and shares through the stream.
#[derive(Clone)]
pub struct Learning {
    /// Its Segmind client: its polling (`PollSchedule`) and its rate budget.
    pub client: Arc<SegmindClient>,
    /// Its voices' speaking rates (the quality gate).
    pub rates: Arc<SpeakingRate>,
}

/// What a replica last said of its usage, to tell again when it changes.
#[derive(Debug, Default)]
struct Told {
    wanting: Option<bool>,
    at: Option<tokio::time::Instant>,
    /// Until then a starting replica's "wanting" stands: it has not
    /// consumed yet.
    hold_until: Option<tokio::time::Instant>,
}

impl Told {
    /// Whether `usage` is worth a record now: the replica starts or stops
    /// wanting more, or its last word is getting old. Pure.
    fn due(&self, usage: Usage, now: tokio::time::Instant) -> bool {
        let held = self.hold_until.is_some_and(|until| now < until);
        if held && !usage.wanting {
            return false;
        }
        let changed = self.wanting != Some(usage.wanting);
        let old = self.at.is_none_or(|at| now - at >= USAGE_INTERVAL);
        changed || old
    }
}

/// Tails the stream and appends this replica's records for one broker
/// session; returns when the session's connection fails. Does nothing
/// without a stream.
pub async fn run(
    fleet: Arc<Fleet>,
    connection: Arc<Connection>,
    publisher: Publisher,
    learning: Learning,
) {
    let Some(stream) = fleet.stream.clone() else {
        return;
    };
    if let Err(e) = tail(&fleet, &connection, &publisher, &learning, &stream).await {
        warn!(error = %e, "the fleet stream is unreachable until the next broker session");
    }
}

async fn tail(
    fleet: &Fleet,
    connection: &Connection,
    publisher: &Publisher,
    learning: &Learning,
    stream: &str,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    // A stream consumer needs a prefetch (credit) and acks.
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), fleet.start_offset());
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            format!("fleet-{}", fleet.source).as_str().into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    // The usage exchange, read through a queue of this session's own.
    let usage_exchange = format!("{stream}{USAGE_SUFFIX}");
    let mut usage_consumer = usage_consumer(&channel, &usage_exchange, &fleet.source).await?;
    let mut pending = fleet.pending.lock().await;
    // Appended now, read back once everything before it has been read.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    *fleet.hello.lock().unwrap_or_else(PoisonError::into_inner) = Some(nonce.clone());
    fleet.append(&Record::Hello {
        source: fleet.source.clone(),
        nonce,
    });
    let mut ticker = tokio::time::interval(fleet.publish_interval);
    ticker.tick().await;
    let mut usage_ticker = tokio::time::interval(USAGE_CHECK);
    usage_ticker.tick().await;
    // A replica starts because work waits (the autoscaler scales on queue
    // depth): the others make room for it before its first call, not a
    // few seconds after, and tell theirs at once. It says otherwise after
    // a few seconds if it has nothing to do.
    let hold_until = tokio::time::Instant::now() + USAGE_INTERVAL;
    *fleet
        .starting_until
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(hold_until);
    let mut told = Told {
        hold_until: Some(hold_until),
        ..Told::default()
    };
    if let Some(usage) = learning.client.budget().usage() {
        fleet.tell(
            Usage {
                wanting: true,
                ..usage
            },
            true,
            &mut told,
        );
    }
    loop {
        tokio::select! {
            next = consumer.next() => {
                let Some(delivery) = next else { return Ok(()) };
                let delivery = delivery?;
                if let Some(offset) = stream_offset(&delivery.properties) {
                    fleet.next_offset.store(offset + 1, Ordering::Relaxed);
                }
                fleet.read(
                    &delivery.properties,
                    delivery.exchange.as_str(),
                    &delivery.data,
                    learning,
                );
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            next = usage_consumer.next() => {
                let Some(delivery) = next else { return Ok(()) };
                let delivery = delivery?;
                fleet.read(
                    &delivery.properties,
                    delivery.exchange.as_str(),
                    &delivery.data,
                    learning,
                );
            }
            Some((to, body)) = pending.recv() => {
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_user_id(fleet.worker_user.as_str().into())
                    .with_timestamp(Utc::now().timestamp().max(0) as u64);
                let sent = match to {
                    Destination::Stream => {
                        let properties = properties.with_delivery_mode(2);
                        publisher.publish("", stream, &body, properties, false).await
                    }
                    Destination::Usage => {
                        publisher.publish(&usage_exchange, "", &body, properties, false).await
                    }
                };
                if let Err(e) = sent {
                    warn!(error = %e, "could not send a record to the fleet");
                }
            }
            _ = usage_ticker.tick() => {
                fleet.tell_usage(learning.client.budget(), &mut told);
            }
            _ = ticker.tick() => {
                let now = Utc::now();
                fleet.ledger().prune(now.date_naive(), now, fleet.cancel_window);
                let polls = learning.client.schedule().snapshot(MIN_LEARNED).unwrap_or_default();
                let rates: Vec<SharedRate> =
                    learning.rates.snapshot().iter().map(SharedRate::from).collect();
                if !polls.is_empty() || !rates.is_empty() {
                    fleet.append(&Record::Priors { source: fleet.source.clone(), polls, rates });
                }
            }
        }
    }
}

/// The suffix of the stream's name that names the usage exchange.
pub const USAGE_SUFFIX: &str = ".usage";

/// Declares the usage exchange (fanout) and a queue of this session's own
/// bound to it (exclusive: it goes with the connection), and consumes it.
async fn usage_consumer(
    channel: &lapin::Channel,
    exchange: &str,
    source: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    use lapin::ExchangeKind;
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().as_str().into(),
            format!("usage-{source}").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The offset RabbitMQ gives a stream delivery (`x-stream-offset`).
fn stream_offset(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_keeps_each_tenants_day_and_forgets_old_ones() {
        let mut l = Ledger::default();
        let d1 = NaiveDate::from_ymd_opt(2026, 12, 6).unwrap();
        let d2 = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        l.spend("a", d1, 3.0);
        l.spend("a", d2, 1.5);
        l.spend("a", d2, 1.0);
        l.spend("b", d2, 7.0);
        l.spend("a", d2, f64::NAN);
        assert_eq!(l.spent("a", d2), 2.5);
        assert_eq!(l.spent("b", d2), 7.0);
        assert_eq!(l.spent("a", d1), 3.0);
        let now = d2.and_hms_opt(12, 0, 0).unwrap().and_utc();
        l.prune(d2, now, chrono::Duration::hours(1));
        assert_eq!(l.spent("a", d1), 0.0);
        assert_eq!(l.spent("a", d2), 2.5);
    }

    #[test]
    fn a_submission_reserves_the_last_part_cost_until_its_actual_cost_is_booked() {
        let mut l = Ledger::default();
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        // Cold: nothing known to reserve.
        assert_eq!(l.reserve("a", "a/j-1", day), 0.0);
        assert_eq!(l.settle("a", "a/j-1", day, 0.05), (day, 0.05));
        // Warm: each submission reserves 0.05 at once.
        for j in 0..3 {
            l.reserve("a", &format!("a/j-{j}"), day);
        }
        assert!((l.spent("a", day) - 0.2).abs() < 1e-9);
        // One was refused: given back; one paid 0.07: corrected by 0.02.
        assert_eq!(l.unreserve("a", "a/j-2"), Some((day, -0.05)));
        let (_, delta) = l.settle("a", "a/j-0", day, 0.07);
        assert!((delta - 0.02).abs() < 1e-9);
        assert!((l.spent("a", day) - 0.17).abs() < 1e-9);
        // A part booked without a reservation (resumed) counts whole.
        assert_eq!(l.settle("a", "a/j-9", day, 0.07), (day, 0.07));
    }

    #[test]
    fn a_cancellation_holds_for_its_window() {
        let mut l = Ledger::default();
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        l.cancel("alice/order-7", at);
        let hour = chrono::Duration::hours(1);
        assert!(l.is_cancelled("alice/order-7", at + chrono::Duration::minutes(59), hour));
        assert!(!l.is_cancelled("alice/order-7", at + chrono::Duration::minutes(61), hour));
        assert!(!l.is_cancelled("bob/order-7", at, hour));
    }

    #[test]
    fn records_keep_their_shape_on_the_wire() {
        let r = Record::Spend {
            tenant: "a".into(),
            day: NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
            credits: 0.05,
            part_cost: Some(0.05),
            job_id: "a/j-1".into(),
            source: "pod-1".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "spend");
        assert_eq!(v["day"], "2026-12-07");
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), r);
    }

    #[test]
    fn the_fleets_word_on_usage_counts_fresh_replicas_only() {
        let t0 = tokio::time::Instant::now();
        let now = t0 + Duration::from_secs(60);
        let peer = |secs_ago: u64, per_second: f64, wanting: bool| Peer {
            heard: now - Duration::from_secs(secs_ago),
            per_second,
            wanting,
        };
        let peers: HashMap<String, Peer> = [
            ("busy-1", peer(2, 0.3, true)),
            ("busy-2", peer(14, 0.3, true)),
            ("quiet", peer(4, 0.1, false)),
            ("gone", peer(16, 0.5, true)),
            ("gone-quiet", peer(60, 0.5, false)),
            // What a replica says it uses counts within the limit.
            ("boasting", peer(1, 1e300, false)),
            ("odd", peer(1, f64::NAN, false)),
            ("negative", peer(1, -5.0, false)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let view = peers_view(&peers, now, 1.0);
        assert_eq!(view.wanting, 2);
        assert!((view.idle_use - 1.1).abs() < 1e-9, "{view:?}");
    }

    #[test]
    fn a_replica_tells_its_usage_when_it_changes_and_every_interval() {
        let t0 = tokio::time::Instant::now();
        let usage = |per_second: f64, wanting: bool| Usage {
            per_second,
            wanting,
        };
        // Its first word, busy or not.
        assert!(Told::default().due(usage(0.0, false), t0));
        let told = Told {
            wanting: Some(false),
            at: Some(t0),
            hold_until: None,
        };
        // It starts wanting more: at once.
        assert!(told.due(usage(0.2, true), t0 + Duration::from_secs(1)));
        // As before: every interval.
        assert!(!told.due(usage(0.2, false), t0 + Duration::from_secs(4)));
        assert!(told.due(usage(0.0, false), t0 + USAGE_INTERVAL));
        // It stops wanting: at once…
        let wanting = Told {
            wanting: Some(true),
            at: Some(t0),
            hold_until: None,
        };
        assert!(wanting.due(usage(0.0, false), t0 + Duration::from_secs(1)));
        // …unless it is starting and has not consumed yet.
        let starting = Told {
            hold_until: Some(t0 + USAGE_INTERVAL),
            ..wanting
        };
        assert!(!starting.due(usage(0.0, false), t0 + Duration::from_secs(1)));
        assert!(starting.due(usage(0.0, false), t0 + USAGE_INTERVAL));
    }

    #[test]
    fn a_usage_record_keeps_its_shape_on_the_wire() {
        let r = Record::Usage {
            source: "pod-1".into(),
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            per_minute: 16.0,
            wanting: true,
            starting: false,
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "usage");
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), r);
    }

    #[test]
    fn shared_rates_name_voices_and_scripts_this_release_knows() {
        let learned = LearnedRate {
            voices: ("Kore", Some("Puck")),
            script: Script::Han,
            observations: vec![5.1, 4.9],
        };
        let shared = SharedRate::from(&learned);
        let v = serde_json::to_value(Record::Priors {
            source: "pod-1".into(),
            polls: vec![],
            rates: vec![shared.clone()],
        })
        .unwrap();
        assert_eq!(v["rates"][0]["voice_2"], "Puck");
        assert_eq!(v["rates"][0]["script"], "han");
        assert_eq!(shared.clone().learned(), Some(learned));
        // A record of an earlier release (no rates) still reads.
        let old = serde_json::json!({"kind": "priors", "source": "p", "polls": [[10.0, 1.0]]});
        assert!(matches!(
            serde_json::from_value::<Record>(old),
            Ok(Record::Priors { rates, .. }) if rates.is_empty()
        ));
        // Unknown voices or scripts are dropped, not guessed.
        let unknown = |voice: &str, script: &str| SharedRate {
            voice: voice.into(),
            script: script.into(),
            ..shared.clone()
        };
        assert_eq!(unknown("Zephyrus", "han").learned(), None);
        assert_eq!(unknown("Kore", "klingon").learned(), None);
    }
}
