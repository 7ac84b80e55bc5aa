//! The consume loop of one broker session: feeds deliveries to
//! [`super::settle::process`] under a concurrency bound, stops consuming while
//! the account is paused, and ends the session when either of its channels
//! (consuming or publishing) is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::pause;
use super::pipeline::{DeliveryLimit, HandOverReason};
use super::settle::{JobContext, REQUEUE, Settlement, hand_over, process};
use crate::broker;

/// The channel requests are consumed on, able to start and cancel a
/// consumer per lane (consumption is cancelled while paused).
pub struct Consuming {
    pub channel: Channel,
    /// The lanes' queues, in `amqp.lanes` order: a delivery's lane is its
    /// index here.
    pub lanes: Vec<String>,
    /// Base of consumer tags; each consumer gets `{tag}.{n}`.
    pub tag: String,
    /// Consumers started on this channel so far.
    started: std::sync::atomic::AtomicU32,
}

impl Consuming {
    pub fn new(channel: Channel, lanes: Vec<String>, tag: String) -> Self {
        Consuming {
            channel,
            lanes,
            tag,
            started: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Starts a consumer of `lane` under a tag of its own. Reusing the tag
    /// of a cancelled consumer while deliveries it received are still
    /// unacked (jobs running through a pause) makes RabbitMQ 3.10's quorum
    /// queue close the connection with INTERNAL_ERROR (seen here), which
    /// returns every held delivery as a counted one.
    async fn start(&self, lane: usize) -> Result<lapin::Consumer, lapin::Error> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}.{n}", self.tag);
        let queue = self.lanes.get(lane).map_or("", String::as_str);
        self.channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Cancels `consumer` of `lane` and hands back what it had buffered but
    /// not started ([`hand_over`]: not counted as a delivery of the job).
    async fn stop(
        &self,
        mut consumer: lapin::Consumer,
        ctx: &JobContext,
        reason: HandOverReason,
        lane: usize,
    ) {
        if let Err(e) = self
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel the consumer");
            return;
        }
        let drain = async {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Err(e) = hand_over(ctx, &delivery, reason, lane).await {
                    warn!(error = %e, "could not settle a buffered delivery; the broker will redeliver it");
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }

    /// Resolves once the consuming channel is closed.
    async fn closed(&self) {
        broker::closed(&self.channel).await
    }
}

/// One lane's consumption in a session: its consumer, its bound on the
/// jobs it holds, and the signal its deliveries see when the broker
/// cancels that consumer.
struct LaneState {
    consumer: Option<lapin::Consumer>,
    permits: Arc<Semaphore>,
    cancelled: watch::Sender<bool>,
}

impl LaneState {
    /// Stops every lane's consumer (see [`Consuming::stop`]).
    async fn stop_all(
        lanes: &mut [LaneState],
        consuming: &Consuming,
        ctx: &JobContext,
        reason: HandOverReason,
    ) {
        for (lane, state) in lanes.iter_mut().enumerate() {
            if let Some(c) = state.consumer.take() {
                consuming.stop(c, ctx, reason, lane).await;
            }
        }
    }
}

/// The next delivery of a lane that may take one (`eligible`), polling the
/// lanes round-robin from `first`; pending while none may.
fn next_delivery<'a>(
    lanes: &'a mut [LaneState],
    eligible: &'a [bool],
    first: usize,
) -> impl Future<
    Output = (
        usize,
        Option<Result<lapin::message::Delivery, lapin::Error>>,
    ),
> + 'a {
    std::future::poll_fn(move |cx| {
        let n = lanes.len();
        for k in 0..n {
            let lane = (first + k) % n;
            if !eligible.get(lane).copied().unwrap_or(false) {
                continue;
            }
            if let Some(consumer) = lanes[lane].consumer.as_mut()
                && let Poll::Ready(next) = consumer.poll_next_unpin(cx)
            {
                return Poll::Ready((lane, next));
            }
        }
        Poll::Pending
    })
}

/// A delivery's share of `amqp.max_bytes_in_flight`: its body's bytes, in
/// KiB units, held until its task ends; counted in
/// `tts_request_bytes_in_flight` meanwhile.
struct Admission {
    _units: tokio::sync::OwnedSemaphorePermit,
    bytes: i64,
    gauge: prometheus::IntGauge,
}

impl Admission {
    const UNIT: u64 = 1024;

    /// The budget's units (at most `u32::MAX`, what one acquire can take).
    fn units(max_bytes: u64) -> usize {
        usize::try_from((max_bytes / Self::UNIT).clamp(1, u64::from(u32::MAX))).unwrap_or(1)
    }

    /// A body's units: at least one, at most the whole budget (a body
    /// larger than the budget runs alone).
    fn weight(body_bytes: usize, max_bytes: u64) -> u32 {
        let units = (body_bytes as u64).div_ceil(Self::UNIT).max(1);
        u32::try_from(units.min(Self::units(max_bytes) as u64)).unwrap_or(u32::MAX)
    }

    fn new(
        units: tokio::sync::OwnedSemaphorePermit,
        body_bytes: usize,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let bytes = i64::try_from(body_bytes).unwrap_or(i64::MAX);
        metrics.request_bytes_in_flight.add(bytes);
        Admission {
            _units: units,
            bytes,
            gauge: metrics.request_bytes_in_flight.clone(),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Why [`run`] returned.
#[derive(Debug)]
pub enum Stopped {
    /// Shutdown was asked and in-flight jobs were drained (or abandoned).
    Shutdown,
    /// The broker connection or one of the session's channels failed;
    /// in-flight deliveries are dead and will be redelivered.
    BrokerLost(String),
}

async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: nobody can ask for shutdown any more.
        std::future::pending::<()>().await;
    }
}

/// Resolves with a reason once either channel of the session is closed: a
/// closed publishing channel would make every job fail to settle, so it
/// ends the session just as a consumer error does.
async fn session_lost(ctx: &JobContext, consuming: &Consuming) -> String {
    tokio::select! {
        _ = ctx.publisher.closed() => "the publishing channel was closed".to_owned(),
        _ = consuming.closed() => "the consuming channel was closed".to_owned(),
    }
}

/// Consumes every lane until shutdown is asked or the session is lost,
/// each lane holding at most `max_in_flight` jobs at once (so a backlog on
/// one never keeps another's deliveries out), pausing while the account is
/// failing. `ready` is true exactly while the consumers are running.
///
/// The semaphores and the AMQP prefetch bound the same thing: prefetch
/// (per consumer) keeps the broker from sending more, a lane's semaphore
/// keeps this loop from starting more, whatever the broker does.
pub async fn run(
    ctx: Arc<JobContext>,
    consuming: &Consuming,
    max_in_flight: usize,
    ready: &AtomicBool,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Stopped {
    let mut lanes: Vec<LaneState> = consuming
        .lanes
        .iter()
        .map(|_| LaneState {
            consumer: None,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            cancelled: watch::Sender::new(false),
        })
        .collect();
    let bytes = Arc::new(Semaphore::new(Admission::units(ctx.max_bytes_in_flight)));
    let mut tasks = JoinSet::new();
    let gate = ctx.pipeline.pause.clone();
    let mut pause_changes = gate.subscribe();
    let lifetime = ctx.pipeline.jobs.delivery_lifetime;
    let mut prober: Option<tokio::task::JoinHandle<()>> = None;
    // When the current pause began; `None` while consuming.
    let mut paused_since: Option<tokio::time::Instant> = None;
    let hold = ctx.pipeline.jobs.pause_hold;
    // The lane polled first next time: lanes with deliveries ready take
    // turns.
    let mut first_lane = 0;
    // Made once per session, not per delivery.
    let lost = session_lost(&ctx, consuming);
    tokio::pin!(lost);
    let stopped = 'session: loop {
        while tasks.try_join_next().is_some() {}
        if gate.paused().is_some() {
            ready.store(false, Ordering::Relaxed);
            // A short pause keeps the consumers and simply takes nothing: a
            // cancelled consumer races with deliveries already on their way,
            // which the broker then returns as counted deliveries of jobs
            // that did nothing wrong (seen here with quorum queues). Only a
            // pause longer than `jobs.pause_hold` cancels them and hands back
            // what they hold, well before RabbitMQ's consumer_timeout.
            let hold_until = *paused_since.get_or_insert_with(tokio::time::Instant::now) + hold;
            if tokio::time::Instant::now() >= hold_until {
                LaneState::stop_all(
                    &mut lanes,
                    consuming,
                    &ctx,
                    HandOverReason::Paused { caused: false },
                )
                .await;
            }
            if prober.as_ref().is_none_or(|p| p.is_finished()) {
                let pipeline = ctx.pipeline.clone();
                prober = Some(tokio::spawn(async move {
                    pause::probe_until_healthy(
                        &pipeline.pause,
                        &pipeline.segmind,
                        &pipeline.storage,
                        pipeline.jobs.probe_initial,
                        pipeline.jobs.probe_max,
                    )
                    .await;
                }));
            }
            let holding = lanes.iter().any(|l| l.consumer.is_some());
            tokio::select! {
                _ = shutdown_requested(&mut shutdown) => break Stopped::Shutdown,
                reason = &mut lost => break Stopped::BrokerLost(reason),
                _ = pause_changes.changed() => continue,
                _ = tokio::time::sleep_until(hold_until), if holding => continue,
            }
        }
        paused_since = None;
        for (lane, state) in lanes.iter_mut().enumerate() {
            if state.consumer.is_none() {
                match consuming.start(lane).await {
                    Ok(c) => state.consumer = Some(c),
                    Err(e) => break 'session Stopped::BrokerLost(e.to_string()),
                }
            }
        }
        ready.store(true, Ordering::Relaxed);
        // A lane takes a delivery while it holds fewer than its bound and
        // while the budget could start a new job soon: a job that would
        // only wait for a paused budget or for paid jobs is not taken.
        let recheck = ctx.pipeline.segmind.budget().intake_delay();
        let eligible: Vec<bool> = lanes
            .iter()
            .map(|state| recheck.is_none() && state.permits.available_permits() > 0)
            .collect();
        let (lane, next) = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => break Stopped::Shutdown,
            reason = &mut lost => break Stopped::BrokerLost(reason),
            _ = pause_changes.changed() => continue,
            // A job ended: its lane may take another.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            () = tokio::time::sleep(recheck.unwrap_or_default()), if recheck.is_some() => continue,
            next = next_delivery(&mut lanes, &eligible, first_lane) => next,
        };
        first_lane = (lane + 1) % lanes.len().max(1);
        match next {
            Some(Ok(delivery)) => {
                let Ok(permit) = lanes[lane].permits.clone().try_acquire_owned() else {
                    // Only this loop takes permits, and it polled the lane
                    // because one was free.
                    continue;
                };
                // Its lifetime runs from its receipt, a wait for admission
                // included.
                let limit =
                    DeliveryLimit::after(lifetime).with_consumer(lanes[lane].cancelled.subscribe());
                // Weighed by its body: it waits, unparsed, until its bytes
                // fit; meanwhile this loop takes no other delivery. A wait
                // past `jobs.pause_hold` gives it and everything the
                // consumers hold back (uncounted), well before the broker's
                // consumer timeout, and consumes again once it would fit.
                let weight = Admission::weight(delivery.data.len(), ctx.max_bytes_in_flight);
                let admitted = match bytes.clone().try_acquire_many_owned(weight) {
                    Ok(p) => p,
                    Err(_) => tokio::select! {
                        _ = shutdown_requested(&mut shutdown) => {
                            if let Err(e) = hand_over(&ctx, &delivery, HandOverReason::Shutdown, lane).await {
                                warn!(error = %e, "could not hand back a delivery waiting for admission; the broker will redeliver it");
                            }
                            break Stopped::Shutdown;
                        }
                        reason = &mut lost => break Stopped::BrokerLost(reason),
                        p = bytes.clone().acquire_many_owned(weight) => match p {
                            Ok(p) => p,
                            Err(_) => break Stopped::Shutdown, // never closed
                        },
                        () = tokio::time::sleep(hold) => {
                            warn!(
                                bytes = delivery.data.len(),
                                "requests fill amqp.max_bytes_in_flight; handing back what the consumers hold until they fit"
                            );
                            if let Err(e) = hand_over(&ctx, &delivery, HandOverReason::Saturated, lane).await {
                                warn!(error = %e, "could not hand back a delivery waiting for admission; the broker will redeliver it");
                            }
                            LaneState::stop_all(&mut lanes, consuming, &ctx, HandOverReason::Saturated).await;
                            ready.store(false, Ordering::Relaxed);
                            tokio::select! {
                                _ = shutdown_requested(&mut shutdown) => break Stopped::Shutdown,
                                reason = &mut lost => break Stopped::BrokerLost(reason),
                                _ = bytes.acquire_many(weight) => {}
                            }
                            continue;
                        }
                    },
                };
                let admitted = Admission::new(admitted, delivery.data.len(), &ctx.pipeline.metrics);
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let _admitted = admitted;
                    let acker = delivery.acker.clone();
                    let run = std::panic::AssertUnwindSafe(process(&ctx, delivery, limit, lane));
                    match run.catch_unwind().await {
                        Ok(settlement) => settlement,
                        Err(_) => {
                            // Settled at once (counted) instead of held
                            // unacked until the broker's consumer timeout.
                            error!("a job's task panicked; rejecting its delivery for a later one");
                            ctx.pipeline
                                .metrics
                                .requeues
                                .with_label_values(&["internal"])
                                .inc();
                            if let Err(e) = acker.reject(REQUEUE).await {
                                warn!(error = %e, "could not reject the delivery; the broker will redeliver it");
                            }
                            Settlement::Requeue
                        }
                    }
                });
            }
            Some(Err(e)) => break Stopped::BrokerLost(e.to_string()),
            None => {
                // RabbitMQ 4.3+ cancels a consumer whose delivery outlived
                // its consumer timeout (that delivery is back in the queue,
                // uncounted). What the consumer still holds is handed back
                // now, uncounted, so nothing stays held long enough to time
                // out too (RabbitMQ 4.4 then closes the channel anyway).
                warn!(
                    queue = consuming.lanes.get(lane).map_or("", String::as_str),
                    "the broker cancelled the consumer; handing back what it holds and consuming again"
                );
                let state = &mut lanes[lane];
                state.cancelled.send_replace(true);
                state.cancelled = watch::Sender::new(false);
                state.consumer = None;
            }
        }
    };
    ready.store(false, Ordering::Relaxed);
    if let Some(p) = prober {
        p.abort();
    }
    match &stopped {
        Stopped::Shutdown => {
            LaneState::stop_all(&mut lanes, consuming, &ctx, HandOverReason::Shutdown).await;
            // Jobs waiting on Segmind hand their deliveries to other
            // replicas now instead of holding them through the grace period.
            ctx.pipeline.hand_over_waiting_jobs();
            while tasks.try_join_next().is_some() {}
            info!(
                in_flight = tasks.len(),
                grace_s = grace.as_secs_f64(),
                "stopping: waiting for in-flight jobs"
            );
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                warn!(
                    abandoned = tasks.len(),
                    "grace period over; unfinished deliveries return to the queue and resume from their checkpoints"
                );
            }
        }
        Stopped::BrokerLost(reason) => {
            warn!(%reason, in_flight = tasks.len(), "broker session lost; in-flight deliveries will be redelivered");
        }
    }
    tasks.abort_all();
    stopped
}

#[cfg(test)]
mod tests {
    use super::Admission;

    #[test]
    fn a_delivery_weighs_its_body_and_never_more_than_the_budget() {
        let mib = 1 << 20;
        assert_eq!(Admission::units(64 * mib), 64 * 1024);
        assert_eq!(Admission::weight(0, 64 * mib), 1);
        assert_eq!(Admission::weight(1, 64 * mib), 1);
        assert_eq!(Admission::weight(1025, 64 * mib), 2);
        assert_eq!(Admission::weight(600_000, 64 * mib), 586);
        // A body larger than the budget takes all of it: it runs alone.
        assert_eq!(Admission::weight(3 * mib as usize, mib), 1024);
    }
}
