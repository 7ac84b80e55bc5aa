//! Many producers, one fleet (issue 25, items 1 and 2): on a rate-limited
//! account, an interactive lane is not held up by a bulk lane's backlog,
//! within a lane one tenant's backlog does not hold up another's jobs, and
//! a delivery handed over at shutdown returns to its own lane.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use serde_json::json;
use tts_worker::testing::config::{Lane, RateScope};

use crate::helpers::{TestApp, spawn_app_with, wait_for};
use crate::long_text::narration;
use tts_worker::testing::broker;

/// Publishes `body` to `queue` (a lane) on the default exchange.
async fn publish_to(app: &TestApp, queue: &str, body: serde_json::Value) {
    app.publisher
        .publish(
            "",
            queue,
            body.to_string().as_bytes(),
            BasicProperties::default(),
            true,
        )
        .await
        .expect("request published");
}

/// Reads events until every job of `wanted` has completed; returns when,
/// and the other jobs' completions seen meanwhile.
async fn until_completed(app: &TestApp, wanted: &HashSet<String>, within: Duration) -> Vec<String> {
    let mut left = wanted.clone();
    let mut others = Vec::new();
    let queue = app.events_queue().to_owned();
    while !left.is_empty() {
        let received = app.next_event_within(&queue, within).await;
        let data = received.completed();
        if !left.remove(&data.job_id) {
            others.push(data.job_id.clone());
        }
    }
    others
}

/// The account allows `per_minute` submissions; parts of ≈ 200 characters.
fn rate_limited(s: &mut tts_worker::testing::config::Settings, per_minute: u32) {
    s.segmind.rate_limit_per_minute = Some(per_minute);
    s.segmind.rate_limit_scope = RateScope::Submits;
    s.long_text.part_chars = 200;
    s.long_text.max_parallel_parts = 2;
}

#[tokio::test]
async fn an_interactive_job_is_not_held_up_by_a_bulk_backlog() {
    let mut bulk = String::new();
    let app = spawn_app_with(
        |sim| sim.rate_limit_per_minute = Some(66),
        |s| {
            rate_limited(s, 60); // one submission a second
            bulk = format!("{}.bulk", s.amqp.requests_queue);
            s.amqp.lanes = vec![
                Lane {
                    queue: s.amqp.requests_queue.clone(),
                    weight: 10,
                },
                Lane {
                    queue: bulk.clone(),
                    weight: 1,
                },
            ];
        },
    )
    .await;
    // 20 chapters of 6 parts on the bulk lane: two minutes of the
    // account's submissions.
    for i in 0..20 {
        let body = json!({"text": narration(6, 180), "job_id": format!("chapter-{i}")});
        publish_to(&app, &bulk, body).await;
    }
    wait_for(
        "the bulk backlog to be submitting",
        Duration::from_secs(30),
        || async { app.sim.stats().submits_accepted >= 8 },
    )
    .await;
    let started = Instant::now();
    publish_to(
        &app,
        app.requests_queue(),
        json!({"text": "Your order has shipped.", "job_id": "checkout-1"}),
    )
    .await;
    let wanted = HashSet::from(["checkout-1".to_owned()]);
    let chapters_done = until_completed(&app, &wanted, Duration::from_secs(60)).await;
    let took = started.elapsed();
    println!(
        "interactive job under a bulk backlog: {took:.1?} (chapters completed meanwhile: {})",
        chapters_done.len()
    );
    // One submission slot (1 s), the simulator's ≈ 0.2 s and the transfer:
    // without the fair line it waits behind a slot per bulk job held (20 s).
    assert!(
        took < Duration::from_secs(6),
        "the interactive job took {took:?}"
    );
    assert!(
        chapters_done.len() < 20,
        "the bulk backlog was still running"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_tenants_backlog_does_not_hold_up_another_tenant_in_the_same_lane() {
    let app = spawn_app_with(
        |sim| sim.rate_limit_per_minute = Some(132),
        |s| {
            rate_limited(s, 120); // two submissions a second; 40 held at once
            s.amqp.max_in_flight = 64;
        },
    )
    .await;
    let short = |round: &str| -> Vec<(String, serde_json::Value)> {
        (0..10)
            .map(|i| {
                let id = format!("b-{round}-{i}");
                let body = json!({
                    "text": format!("Notification {i} of round {round}."),
                    "job_id": id,
                    "metadata": {"tenant": "b"},
                });
                (id, body)
            })
            .collect()
    };
    // B's ten short jobs alone.
    let alone = short("alone");
    let wanted: HashSet<String> = alone.iter().map(|(id, _)| id.clone()).collect();
    let started = Instant::now();
    for (_, body) in alone {
        app.publish_json(body).await;
    }
    until_completed(&app, &wanted, Duration::from_secs(60)).await;
    let t_alone = started.elapsed();

    // A's 30 long jobs first (8 parts each: two minutes of submissions),
    // then B's ten again once A's are being submitted.
    let before = app.sim.stats().submits_accepted;
    for i in 0..30 {
        app.publish_json(json!({
            "text": narration(8, 180),
            "job_id": format!("a-{i}"),
            "metadata": {"tenant": "a"},
        }))
        .await;
    }
    wait_for(
        "A's jobs to be submitting",
        Duration::from_secs(30),
        || async { app.sim.stats().submits_accepted >= before + 6 },
    )
    .await;
    let shared = short("shared");
    let wanted: HashSet<String> = shared.iter().map(|(id, _)| id.clone()).collect();
    let started = Instant::now();
    for (_, body) in shared {
        app.publish_json(body).await;
    }
    let a_done = until_completed(&app, &wanted, Duration::from_secs(90)).await;
    let t_shared = started.elapsed();
    let ratio = t_shared.as_secs_f64() / t_alone.as_secs_f64();
    println!(
        "tenant B's 10 jobs: {t_alone:.1?} alone, {t_shared:.1?} behind A's 30 long jobs: {ratio:.2}x \
         (A's completed meanwhile: {})",
        a_done.len()
    );
    assert!(a_done.len() < 30, "A's jobs were still running");
    // B has every other slot while A's wait (2x on a saturated account);
    // first come, first served would put B behind A's 30 waiting jobs (4x).
    assert!(ratio < 3.0, "{ratio:.2}x the time alone");
    app.stop().await;
}

#[tokio::test]
async fn a_job_handed_over_at_shutdown_returns_to_its_own_lane() {
    let mut bulk = String::new();
    let mut app = spawn_app_with(
        |_| {},
        |s| {
            // Long enough for the job to finish if the worker held it.
            s.shutdown.grace_period = Duration::from_secs(20);
            bulk = format!("{}.bulk", s.amqp.requests_queue);
            s.amqp.lanes = vec![
                Lane {
                    queue: s.amqp.requests_queue.clone(),
                    weight: 10,
                },
                Lane {
                    queue: bulk.clone(),
                    weight: 1,
                },
            ];
        },
    )
    .await;
    let body = json!({"text": "a long bulk chapter [[sim:latency=4]]", "job_id": "bulk-long"});
    publish_to(&app, &bulk, body).await;
    wait_for("its submission", Duration::from_secs(10), || {
        let accepted = app.sim.stats().submits_accepted;
        async move { accepted >= 1 }
    })
    .await;
    app.stop_worker().await;
    let bulk_ready = broker::queue_depth(&app.channel, &bulk)
        .await
        .expect("the bulk lane exists");
    assert_eq!(bulk_ready, 1, "handed back to the bulk lane");
    assert_eq!(app.requests_ready().await, 0, "not to the interactive lane");

    // The next replica resumes it from its lane without paying again.
    app.restart_worker(|_| {}).await;
    let received = app.next_event().await;
    assert_eq!(received.completed().job_id, "bulk-long");
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "resumed, not submitted again"
    );
    app.stop().await;
}
