//! The fleet's shared memory, a RabbitMQ stream (issue 25, items 3, 4 and
//! 6): spend caps across replicas, cancellation, and priors a new replica
//! starts from.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use serde_json::json;
use tts_worker::testing::wire::EventData;

use crate::helpers::{Received, TestApp, spawn_app_with, wait_for};
use crate::long_text::narration;

/// Publishes a producer's cancellation of `job_id` to the control exchange.
async fn cancel(app: &TestApp, job_id: &str) {
    app.publisher
        .publish(
            &app.settings.fleet.control_exchange,
            "",
            json!({ "job_id": job_id }).to_string().as_bytes(),
            BasicProperties::default(),
            false,
        )
        .await
        .expect("cancellation published");
}

/// Accepted submissions of texts containing `marker`.
fn paid_for(app: &TestApp, marker: &str) -> u32 {
    app.sim
        .stats()
        .submits_by_text
        .iter()
        .filter(|(text, _)| text.contains(marker))
        .map(|(_, n)| *n)
        .sum()
}

/// The job id and error code of a terminal event (`completed` for a
/// completion).
fn outcome(received: &Received) -> (String, String) {
    match &received.event.data {
        EventData::Completed(c) => (c.job_id.clone(), "completed".into()),
        EventData::Failed(f) => (f.job_id.clone(), f.error.code.clone()),
        EventData::Progress(p) => panic!("a progress event on the events queue: {p:?}"),
    }
}

#[tokio::test]
async fn a_capped_tenant_stops_paying_at_its_cap_across_three_replicas() {
    // 1 credit a day; the simulator charges 0.05 a request: 20 requests.
    let app = spawn_app_with(|_| {}, |s| s.tenants.daily_credit_cap = Some(1.0)).await;
    let r2 = app.start_replica(|_| {}).await;
    let r3 = app.start_replica(|_| {}).await;
    // Another tenant's job teaches the fleet what a request costs.
    app.publish_json(
        json!({"text": "Warm up.", "job_id": "warm", "metadata": {"tenant": "other"}}),
    )
    .await;
    assert_eq!(outcome(&app.next_event().await).1, "completed");
    for addr in [app.ops_addr, r2.ops_addr, r3.ops_addr] {
        wait_for(
            "every replica to read the cost",
            Duration::from_secs(10),
            || async move {
                crate::helpers::metric_at(addr, "tts_fleet_records_total{kind=\"spend\"}")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
            },
        )
        .await;
    }
    // A runaway producer: 60 requests at once, over three replicas.
    for i in 0..60 {
        app.publish_json(json!({
            "text": format!("Capped notice {i}."),
            "job_id": format!("capped-{i}"),
            "metadata": {"tenant": "capped"},
        }))
        .await;
    }
    for i in 0..5 {
        app.publish_json(json!({
            "text": format!("Free notice {i}."),
            "job_id": format!("free-{i}"),
            "metadata": {"tenant": "free"},
        }))
        .await;
    }
    let mut outcomes: HashMap<String, String> = HashMap::new();
    while outcomes.len() < 65 {
        let (job, code) = outcome(
            &app.next_event_within(app.events_queue(), Duration::from_secs(60))
                .await,
        );
        outcomes.insert(job, code);
    }
    let capped_done = (0..60)
        .filter(|i| outcomes[&format!("capped-{i}")] == "completed")
        .count();
    let capped_refused = (0..60)
        .filter(|i| outcomes[&format!("capped-{i}")] == "spend_cap_reached")
        .count();
    let paid = paid_for(&app, "Capped notice");
    let overspend = f64::from(paid) * 0.05 - 1.0;
    println!(
        "capped tenant: {paid} requests paid for a cap of 20 ({capped_done} completed, {capped_refused} refused): \
         overspend {overspend:.2} credits across 3 replicas"
    );
    assert_eq!(capped_done + capped_refused, 60, "{outcomes:?}");
    assert!(paid >= 19, "the cap stopped it early: {paid}");
    // Bound: what the three replicas admit within the stream's lag (a
    // flood of 60 requests at once is the worst case).
    assert!(paid <= 30, "{paid} paid for a cap of 20");
    for i in 0..5 {
        assert_eq!(
            outcomes[&format!("free-{i}")],
            "completed",
            "another tenant is unaffected"
        );
    }
    // Its next request is refused before anything is paid; retryable.
    app.publish_json(
        json!({"text": "Capped again.", "job_id": "capped-next", "metadata": {"tenant": "capped"}}),
    )
    .await;
    let refused = app.next_event().await;
    assert_eq!(refused.failed().error.code, "spend_cap_reached");
    assert!(refused.failed().error.retryable, "retryable: tomorrow");
    assert_eq!(paid_for(&app, "Capped again"), 0);
    r2.stop().await;
    r3.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_stops_paying_queued_running_or_finished() {
    let mut app = spawn_app_with(
        |sim| {
            sim.latency_mean = Duration::from_millis(700);
            sim.latency_spread = Duration::from_millis(100);
        },
        |s| {
            s.long_text.part_chars = 200;
            s.long_text.max_parallel_parts = 1;
        },
    )
    .await;
    // Finished: a cancel after completion changes nothing; a resend is
    // answered from storage.
    app.publish_json(json!({"text": "Already done.", "job_id": "done-1"}))
        .await;
    assert_eq!(outcome(&app.next_event().await).1, "completed");
    cancel(&app, "done-1").await;

    // Queued: published while no worker runs, cancelled before one starts.
    app.stop_worker().await;
    app.publish_json(json!({"text": "Never needed.", "job_id": "queued-1"}))
        .await;
    cancel(&app, "queued-1").await;
    app.restart_worker(|_| {}).await;
    let queued = app.next_event().await;
    assert_eq!(queued.event.kind, "tts.job.cancelled");
    assert_eq!(outcome(&queued), ("queued-1".into(), "cancelled".into()));
    assert_eq!(paid_for(&app, "Never needed"), 0, "nothing was paid");

    app.publish_json(json!({"text": "Already done.", "job_id": "done-1"}))
        .await;
    let again = app.next_event().await;
    assert_eq!(
        outcome(&again).1,
        "completed",
        "a cancel of a finished job is a no-op"
    );
    assert!(again.completed().served_from_storage);

    // Running: a long job of parts submitted one after another.
    let text = narration(12, 180);
    app.publish_json(json!({"text": text, "job_id": "long-1"}))
        .await;
    wait_for("three parts paid", Duration::from_secs(60), || async {
        // The first short job, then three of its parts.
        app.sim.stats().submits_accepted >= 4
    })
    .await;
    let started = Instant::now();
    cancel(&app, "long-1").await;
    let ended = app
        .next_event_within(app.events_queue(), Duration::from_secs(60))
        .await;
    assert_eq!(ended.event.kind, "tts.job.cancelled");
    assert_eq!(outcome(&ended), ("long-1".into(), "cancelled".into()));
    let parts = tts_worker::testing::plan::plan(&text, 200, false).len();
    // Every accepted submission but the first short job's was one of its
    // parts (the resend was answered from storage, the queued job paid
    // nothing).
    let paid = app.sim.stats().submits_accepted as usize - 1;
    println!(
        "cancelled a running job of {parts} parts after {paid} were paid ({:.1?} to end): \
         {} parts not submitted",
        started.elapsed(),
        parts - paid
    );
    assert!(paid < parts, "all {parts} parts were paid");
    app.stop().await;
}

#[tokio::test]
async fn a_new_replica_polls_like_a_warm_one_from_the_start() {
    // The cold prior says 4 s; the simulator answers in ≈ 0.4 s.
    let cold = |s: &mut tts_worker::testing::config::Settings| {
        s.segmind.poll.prior_latency = Duration::from_secs(4);
        s.segmind.poll.prior_spread = Duration::from_millis(500);
        s.segmind.poll.target_lag = Duration::from_millis(100);
        s.segmind.poll.max_interval = Duration::from_secs(2);
        s.fleet.publish_interval = Duration::from_millis(300);
    };
    let mut app = spawn_app_with(
        |sim| {
            sim.latency_mean = Duration::from_millis(400);
            sim.latency_spread = Duration::from_millis(50);
        },
        cold,
    )
    .await;
    // The first replica learns from 40 jobs, then stops.
    for i in 0..40 {
        app.publish_json(json!({"text": format!("Learning {i}."), "job_id": format!("learn-{i}")}))
            .await;
        app.next_event().await;
    }
    wait_for(
        "the learned priors on the stream",
        Duration::from_secs(10),
        || async {
            // Its own records come back to it (and are not applied twice).
            app.metric("tts_fleet_records_total{kind=\"priors\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    app.stop_worker().await;

    // A new replica: its first job.
    app.restart_worker(|_| {}).await;
    wait_for(
        "the new replica to read the priors",
        Duration::from_secs(10),
        || async {
            app.metric("tts_fleet_records_total{kind=\"priors\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    let started = Instant::now();
    app.publish_json(json!({"text": "First of the new replica.", "job_id": "warm-1"}))
        .await;
    assert_eq!(outcome(&app.next_event().await).1, "completed");
    let warm = started.elapsed();

    // The same without the fleet's memory.
    app.restart_worker(|s| s.fleet.stream = None).await;
    let started = Instant::now();
    app.publish_json(json!({"text": "First of a cold replica.", "job_id": "cold-1"}))
        .await;
    assert_eq!(outcome(&app.next_event().await).1, "completed");
    let cold = started.elapsed();
    println!("a new replica's first job: {warm:.2?} with the fleet's priors, {cold:.2?} cold");
    assert!(
        warm < Duration::from_millis(2000),
        "the first job took {warm:?}: polled at the cold prior"
    );
    assert!(cold > warm, "cold {cold:?}, warm {warm:?}");
    app.stop().await;
}

/// Four sentences of prose tagged `tag`: ≈ 25 s of speech at a usual pace.
fn prose(tag: &str) -> String {
    (1..=4)
        .map(|i| {
            format!(
                "{tag} sentence {i} tells of a calm river that winds between green hills, \
                 where the people of the valley walk in the evening light."
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn a_new_replica_judges_a_fast_voice_like_a_warm_one() {
    // Voices speak 1.7 times their usual pace: Kore's takes are ≈ 0.55 of
    // what the prior expects, under the 0.65 below which a take is cut.
    let mut app = spawn_app_with(
        |sim| {
            sim.speech = segmind_sim::model::SpeechModel::Realistic {
                cap: segmind_sim::model::OUTPUT_CAP,
            };
            sim.pace = 1.7;
        },
        |s| s.fleet.publish_interval = Duration::from_millis(300),
    )
    .await;
    // The first replica learns the pace from its takes (the first ones are
    // judged cut and synthesized again), then shares it and stops.
    for i in 0..8 {
        let tag = format!("Learning-{i}");
        app.publish_json(json!({"text": prose(&tag), "job_id": tag}))
            .await;
        app.next_event().await;
    }
    app.publish_json(json!({"text": prose("Warm-first"), "job_id": "warm-first"}))
        .await;
    assert_eq!(outcome(&app.next_event().await).1, "completed");
    assert_eq!(paid_for(&app, "Warm-first"), 1, "the warm replica's take");
    wait_for(
        "the learned rates on the stream",
        Duration::from_secs(10),
        || async {
            app.metric("tts_fleet_records_total{kind=\"priors\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    app.stop_worker().await;

    // A new replica: its first take of the voice.
    app.restart_worker(|_| {}).await;
    wait_for(
        "the new replica to read the rates",
        Duration::from_secs(10),
        || async {
            app.metric("tts_fleet_records_total{kind=\"priors\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    app.publish_json(json!({"text": prose("New-first"), "job_id": "new-first"}))
        .await;
    let new = outcome(&app.next_event().await).1;
    let new_takes = paid_for(&app, "New-first");

    // The same without the fleet's memory.
    app.restart_worker(|s| s.fleet.stream = None).await;
    app.publish_json(json!({"text": prose("Cold-first"), "job_id": "cold-first"}))
        .await;
    let cold = outcome(&app.next_event().await).1;
    let cold_takes = paid_for(&app, "Cold-first");
    println!(
        "a fast voice's first job on a new replica: {new_takes} take(s), {new} with the fleet's \
         rates; {cold_takes} take(s), {cold} cold"
    );
    assert_eq!(new, "completed");
    assert_eq!(new_takes, 1, "the new replica judged a normal take cut");
    assert!(
        cold_takes > 1,
        "a cold replica is expected to call the fast take cut ({cold_takes} take)"
    );
    app.stop().await;
}
