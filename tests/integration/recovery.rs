//! Nothing lost, nothing paid twice: crash-resume, idempotent replays,
//! account-level pause, graceful shutdown, broker loss, storage outages,
//! poison messages.

use std::time::Duration;

use serde_json::{Value, json};
use tts_worker::testing::checkpoint::{self, Checkpoint, Checkpoints, Loaded, PartsCheckpoint};
use tts_worker::testing::job::{JobId, SpeechRequest, Voice};

use crate::helpers::{TestApp, spawn_app, spawn_app_with, wait_for};

fn speech(text: &str) -> SpeechRequest {
    SpeechRequest {
        text: text.into(),
        voice_1: Voice::parse("Kore").unwrap(),
        voice_2: None,
        temperature: 0.4,
        style: None,
    }
}

fn checkpoints(app: &TestApp) -> Checkpoints {
    Checkpoints::new(
        app.storage.clone(),
        &app.settings.s3.prefix,
        Duration::from_secs(3300),
    )
}

/// The records of a one-part job's plan, if any.
async fn plan_of(app: &TestApp, job_id: &str, text: &str) -> Option<PartsCheckpoint> {
    let part_chars = app.settings.long_text.part_chars;
    let plan = tts_worker::testing::plan::plan(text, part_chars, false);
    let id = JobId::parse(job_id, 64).unwrap();
    match checkpoints(app)
        .load_plan(&id, &speech(text), part_chars, &plan)
        .await
        .unwrap()
    {
        Loaded::Found(cp) => Some(*cp),
        Loaded::Fresh { .. } => None,
    }
}

/// Submits straight to the simulator, as a worker of the previous release
/// that died right after its
/// checkpoint would have, and writes that checkpoint.
async fn submitted_by_a_dead_worker(app: &TestApp, job_id: &str, text: &str) -> String {
    let submitted: Value = reqwest::Client::new()
        .post(format!("{}/v2/gemini-2.5-pro-tts", app.sim.base_url()))
        .header("x-api-key", &app.api_key)
        .json(&json!({"text": text, "voice_1": "Kore", "temperature": 0.4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request_id = submitted["request_id"].as_str().unwrap().to_owned();
    checkpoints(app)
        .save(&Checkpoint {
            job_id: job_id.into(),
            request_id: request_id.clone(),
            submitted_at: chrono::Utc::now(),
            fingerprint: checkpoint::fingerprint(&speech(text)),
            stored: None,
        })
        .await
        .unwrap();
    request_id
}

#[tokio::test]
async fn a_redelivered_job_resumes_its_segmind_request_instead_of_paying_again() {
    let app = spawn_app().await;
    let request_id = submitted_by_a_dead_worker(&app, "resume-1", "already paid for").await;
    let job_id = JobId::parse("resume-1", 64).unwrap();
    let before = checkpoints(&app)
        .load(&job_id, &speech("already paid for"))
        .await
        .unwrap()
        .unwrap();
    app.publish_json(json!({"text": "already paid for", "job_id": "resume-1"}))
        .await;
    let received = app.next_event().await;
    let data = received.completed();
    assert_eq!(
        data.segmind.request_id, request_id,
        "the earlier request was resumed"
    );
    // The previous release's checkpoint was read as a one-part plan.
    let after = plan_of(&app, "resume-1", "already paid for")
        .await
        .expect("the job's plan is recorded");
    // Delivered as served: the part's record is the delivery's.
    assert!(
        after.parts[0]
            .audio
            .as_ref()
            .is_some_and(|a| a.as_served.is_some() && a.key == data.audio.key),
        "the checkpoint records the stored audio"
    );
    assert_eq!(
        after.parts[0].submitted_at,
        Some(before.submitted_at),
        "the resume window still counts from the original submission"
    );
    assert_eq!(app.sim.stats().submits_accepted, 1, "no second submission");
    assert!(
        app.metrics()
            .await
            .contains("tts_jobs_resumed_total{kind=\"poll\"} 1")
    );
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn an_expired_checkpoint_falls_back_to_a_fresh_submit() {
    let app = spawn_app_with(
        |c| {
            // Results live 2 s: the old one is gone by the time the job is
            // redelivered, the fresh one is fetched well within it.
            c.retention = Duration::from_secs(2);
            c.latency_mean = Duration::from_millis(50);
        },
        |_| {},
    )
    .await;
    let old = submitted_by_a_dead_worker(&app, "resume-2", "expired at segmind").await;
    // Wait until the simulator has dropped the old result.
    let status_url = format!("{}/v2/requests/{old}/status", app.sim.base_url());
    wait_for(
        "the old result to expire",
        Duration::from_secs(10),
        || async {
            reqwest::Client::new()
                .get(&status_url)
                .header("x-api-key", &app.api_key)
                .send()
                .await
                .is_ok_and(|r| r.status() == 404)
        },
    )
    .await;
    app.publish_json(json!({"text": "expired at segmind", "job_id": "resume-2"}))
        .await;
    let received = app.next_event().await;
    let stats = app.sim.stats();
    assert_eq!(
        stats.submits_accepted, 2,
        "a 404 on resume leads to one fresh submission"
    );
    let c = received.completed();
    assert_eq!(c.job_id, "resume-2");
    let new = c.segmind.request_id.clone();
    assert_ne!(new, old);
    app.stop().await;
}

#[tokio::test]
async fn a_checkpoint_for_different_speech_is_not_resumed() {
    let app = spawn_app().await;
    let other = submitted_by_a_dead_worker(&app, "reused-id", "the first request").await;
    app.publish_json(json!({"text": "a different request", "job_id": "reused-id"}))
        .await;
    let received = app.next_event().await;
    assert_ne!(received.completed().segmind.request_id, other);
    assert_eq!(app.sim.stats().submits_accepted, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_job_is_served_from_storage_with_the_same_event_id() {
    let app = spawn_app().await;
    let body = json!({"text": "say it once", "job_id": "once-1"});
    app.publish_json(body.clone()).await;
    let first = app.next_event().await;
    assert!(!first.completed().served_from_storage);
    app.publish_json(body).await;
    let second = app.next_event().await;
    let data = second.completed();
    assert!(data.served_from_storage);
    assert_eq!(data.audio.sha256, first.completed().audio.sha256);
    assert_eq!(
        second.event.id, first.event.id,
        "consumers can drop the copy by id"
    );
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "no Segmind call for the repeat"
    );
    assert_eq!(app.sim.stats().status_polls, first_polls(&app, &first));
    assert_eq!(app.stop().await, 0);
}

fn first_polls(app: &TestApp, first: &crate::helpers::Received) -> u64 {
    u64::from(app.sim.stats().requests[&first.completed().segmind.request_id].status_polls)
}

#[tokio::test]
async fn a_tampered_object_is_produced_again_rather_than_replayed() {
    let app = spawn_app().await;
    let body = json!({"text": "check my checksum", "job_id": "tamper-1"});
    app.publish_json(body.clone()).await;
    let first = app.next_event().await;
    let key = first.completed().audio.key.clone();
    // Someone overwrites the object (no checksum metadata).
    app.storage
        .put_bytes(&key, b"not the audio".to_vec(), "audio/wav")
        .await
        .unwrap();
    app.publish_json(body).await;
    let second = app.next_event().await;
    assert!(!second.completed().served_from_storage);
    let object = app.storage.get(&key).await.unwrap();
    assert_eq!(
        object.sha256.as_deref(),
        Some(second.completed().audio.sha256.as_str())
    );
    app.stop().await;
}

#[tokio::test]
async fn account_errors_pause_consumption_and_resume_when_fixed() {
    let app = spawn_app_with(
        |c| c.api_key = "not-yet-valid".into(),
        |s| {
            s.jobs.probe_initial = Duration::from_millis(200);
            s.jobs.probe_max = Duration::from_millis(400);
            // Longer than the hold: the consumer is cancelled meanwhile.
            s.jobs.pause_hold = Duration::from_millis(300);
        },
    )
    .await;
    app.publish_json(json!({"text": "wait for the account", "job_id": "acct-1"}))
        .await;
    // The job meets a 401: the worker pauses instead of failing it.
    wait_for(
        "the unauthorized pause",
        Duration::from_secs(10),
        || async {
            app.metric("tts_consumption_paused{reason=\"unauthorized\"}")
                .await
                == Some(1.0)
        },
    )
    .await;
    // The consume loop notices the pause a moment after the gate closes.
    wait_for("not ready while paused", Duration::from_secs(5), || async {
        app.ready().await == 503
    })
    .await;
    let early = app
        .get_from(app.events_queue(), Duration::from_millis(300))
        .await;
    assert!(early.is_none(), "the job was not failed");
    // Probes keep failing (each is a 401 at the simulator), and the job is
    // neither failed nor taken again meanwhile.
    wait_for("two failed probes", Duration::from_secs(10), || async {
        app.sim.stats().unauthorized >= 3
    })
    .await;
    assert_eq!(app.ready().await, 503, "still paused");
    // Handed back (the job that met the 401, then, once the hold is over,
    // its copy the cancelled consumer held), never requeued.
    assert!(
        app.metric("tts_handovers_total{reason=\"paused\"}")
            .await
            .is_some_and(|n| n >= 2.0)
    );
    assert!(!app.metrics().await.contains("tts_requeues_total{"));

    // Published while paused: it waits in the queue.
    app.publish_json(json!({"text": "published while paused", "job_id": "acct-2"}))
        .await;
    // The account is fixed: the probe notices, consumption resumes by itself.
    let key = app.api_key.clone();
    app.sim.set_api_key(&key);
    let mut done = Vec::new();
    for _ in 0..2 {
        let received = app.next_event().await;
        let c = received.completed();
        done.push((c.job_id.clone(), c.attempts));
    }
    done.sort();
    assert_eq!(
        done,
        [("acct-1".to_owned(), 1), ("acct-2".to_owned(), 1)],
        "a pause is the account's fault: not counted as a delivery of any job"
    );
    assert!(
        app.metrics()
            .await
            .contains("tts_consumption_paused{reason=\"unauthorized\"} 0")
    );
    assert_eq!(app.ready().await, 200);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn exhausted_credits_pause_until_credits_return() {
    let app = spawn_app_with(
        |c| c.credits = Some(0.0),
        |s| s.jobs.probe_initial = Duration::from_millis(200),
    )
    .await;
    app.publish_json(json!({"text": "needs credits", "job_id": "credits-1"}))
        .await;
    wait_for(
        "the insufficient_credits pause",
        Duration::from_secs(10),
        || async {
            app.metric("tts_consumption_paused{reason=\"insufficient_credits\"}")
                .await
                == Some(1.0)
        },
    )
    .await;
    app.sim.set_credits(Some(10.0));
    assert_eq!(app.next_event().await.completed().job_id, "credits-1");
    app.stop().await;
}

/// Scale-in: a worker told to stop hands its waiting jobs to the next replica
/// at once (instead of holding them through the grace period), the next one
/// resumes the Segmind request from the checkpoint, and the interruption is
/// not counted: with `max_deliveries = 1`, two shutdowns in a row would
/// otherwise make the job a poison message.
#[tokio::test]
async fn shutdown_hands_waiting_jobs_over_uncounted_and_the_next_worker_resumes_them() {
    let mut app = spawn_app_with(
        |_| {},
        |s| {
            // Long enough for the job to finish if the worker held it.
            s.shutdown.grace_period = Duration::from_secs(20);
            s.jobs.max_deliveries = 1;
        },
    )
    .await;
    let text = "a long one [[sim:latency=4]]";
    app.publish_json(json!({"text": text, "job_id": "long-1"}))
        .await;
    let checkpointed = || async {
        plan_of(&app, "long-1", text)
            .await
            .is_some_and(|cp| cp.parts[0].request_id.is_some())
    };
    wait_for("the checkpoint", Duration::from_secs(10), checkpointed).await;
    app.stop_worker().await;
    assert_eq!(
        app.requests_ready().await,
        1,
        "the waiting job was handed back, not finished during the grace period"
    );

    // The next replica picks it up and is stopped too, while it polls.
    app.restart_worker(|_| {}).await;
    wait_for(
        "the resumed job to poll",
        Duration::from_secs(10),
        || async { app.metric("tts_jobs_resumed_total{kind=\"poll\"}").await == Some(1.0) },
    )
    .await;
    app.stop_worker().await;
    assert_eq!(app.requests_ready().await, 1, "handed back a second time");

    app.restart_worker(|_| {}).await;
    let received = app.next_event().await;
    let data = received.completed();
    assert_eq!(data.attempts, 1, "shutdowns are not the job's deliveries");
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "resumed, not submitted again"
    );
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_message_that_never_finishes_is_dead_lettered_as_poison() {
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.shutdown.grace_period = Duration::from_millis(100);
            s.jobs.max_deliveries = 1;
        },
    )
    .await;
    let body = br#"{"text":"I stall every worker [[sim:latency=30]]","job_id":"poison-1"}"#;
    app.publish_raw(body, Default::default()).await;
    wait_for(
        "the job to be submitted",
        Duration::from_secs(10),
        || async { app.sim.stats().submits_accepted == 1 },
    )
    .await;
    // The worker loses the delivery mid-job (as a crash or a network cut
    // would), so the broker redelivers it and counts it; the second delivery
    // is over the limit.
    assert!(app.kill_worker_connection() > 0, "the worker was connected");
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "poison_message");
    assert!(
        f.error.message.contains("delivered 2 times"),
        "{}",
        f.error.message
    );
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.delivery.data, body.to_vec());
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_storage_outage_requeues_until_the_last_delivery_then_fails() {
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.s3.endpoint = Some("http://127.0.0.1:9".parse().unwrap()); // nothing listens
            s.s3.max_attempts = 1;
            s.jobs.max_deliveries = 2;
            s.jobs.requeue_delay = Duration::from_millis(100);
        },
    )
    .await;
    app.publish_json(json!({"text": "store me", "job_id": "s3-down-1"}))
        .await;
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "storage_failed");
    assert!(f.error.retryable);
    assert_eq!(f.attempts, 2);
    assert!(
        app.metrics()
            .await
            .contains("tts_requeues_total{reason=\"storage_failed\"} 1")
    );
    app.stop().await;
}

/// RabbitMQ 4.3 no longer counts `basic.nack(requeue)`: a worker that
/// requeued its transient failures that way looped forever there. Run by
/// `scripts/test.sh` on 3.10, 4.0 and 4.3.
#[tokio::test]
async fn a_job_whose_polls_always_fail_ends_as_a_failure_event_after_max_deliveries() {
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.jobs.max_deliveries = 2;
            s.jobs.requeue_delay = Duration::from_millis(100);
            s.segmind.retry.attempts = 3;
        },
    )
    .await;
    app.publish_json(json!({"text": "polls fail [[sim:status-fault=502]]", "job_id": "polls-1"}))
        .await;
    let received = app.next_event().await;
    let f = received.failed();
    assert_eq!(f.error.code, "upstream_unavailable");
    assert_eq!(f.error.http_status, Some(502));
    assert!(f.error.retryable);
    assert_eq!(f.attempts, 2, "ended on the last allowed delivery");
    assert_eq!(
        app.sim.stats().submits_accepted,
        1,
        "the second delivery resumed the paid request"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tts_requeues_total{reason=\"upstream_unavailable\"} 1"),
        "{metrics}"
    );
    assert_eq!(app.stop().await, 0, "nothing left looping in the queue");
}

/// A 403 that concerns one request (a policy rule on its text) must neither
/// stall the queue nor loop: the jobs held alongside are never charged for
/// the pauses, and the request fails with its own code once it has caused
/// `jobs.max_pause_cycles` pauses while the probe said the account works.
#[tokio::test]
async fn a_refusal_of_one_request_fails_that_request_while_the_others_complete() {
    let app = spawn_app_with(
        |c| c.latency_mean = Duration::from_millis(400),
        |s| {
            s.jobs.max_deliveries = 3;
            s.jobs.probe_initial = Duration::from_millis(200);
            s.jobs.probe_max = Duration::from_millis(400);
        },
    )
    .await;
    app.publish_json(
        json!({"text": "not for this account [[sim:forbidden]]", "job_id": "refused-1"}),
    )
    .await;
    for i in 0..5 {
        app.publish_json(json!({"text": format!("ordinary job {i}"), "job_id": format!("ok-{i}")}))
            .await;
    }
    let mut completed = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..6 {
        let received = app.next_event().await;
        match &received.event.data {
            tts_worker::testing::wire::EventData::Completed(c) => {
                completed.push((c.job_id.clone(), c.attempts))
            }
            tts_worker::testing::wire::EventData::Failed(f) => failed.push(f.clone()),
            tts_worker::testing::wire::EventData::Progress(p) => {
                panic!("a progress event on the events queue: {p:?}")
            }
        }
    }
    completed.sort();
    assert_eq!(
        completed,
        (0..5).map(|i| (format!("ok-{i}"), 1)).collect::<Vec<_>>(),
        "the ordinary jobs complete, none charged a delivery for the pauses"
    );
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!(f.job_id, "refused-1");
    assert_eq!(f.error.code, "forbidden");
    assert_eq!(f.error.http_status, Some(403));
    assert!(f.error.message.contains("3 pauses"), "{}", f.error.message);
    assert_eq!(f.attempts, 1, "its pauses were not deliveries either");
    let dead = app
        .get_from(
            &app.settings.amqp.dead_letter_queue,
            Duration::from_millis(300),
        )
        .await;
    assert!(dead.is_none(), "nothing dead-lettered");
    assert_eq!(app.sim.stats().submits_accepted, 5);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_lost_broker_connection_is_reestablished() {
    let app = spawn_app().await;
    app.publish_json(json!({"text": "before", "job_id": "before-1"}))
        .await;
    app.next_event().await.completed();
    assert!(
        app.kill_worker_connection() >= 1,
        "found the worker's connection"
    );
    // Readiness reports the outage (the first reconnection waits 1 s), then
    // the worker comes back by itself.
    wait_for(
        "/readyz to report the outage",
        Duration::from_secs(5),
        || async { app.ready().await == 503 },
    )
    .await;
    wait_for(
        "the worker to reconnect",
        Duration::from_secs(10),
        || async { app.ready().await == 200 && app.worker_connections().len() == 1 },
    )
    .await;
    app.publish_json(json!({"text": "after", "job_id": "after-1"}))
        .await;
    assert_eq!(app.next_event().await.completed().job_id, "after-1");
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn jobs_in_flight_return_to_zero_after_a_broker_loss() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.publish_json(json!({"text": format!("held across a loss {i} [[sim:latency=2]]"), "job_id": format!("held-{i}")}))
            .await;
    }
    wait_for("three jobs in flight", Duration::from_secs(10), || async {
        app.metric("tts_jobs_in_flight").await == Some(3.0)
    })
    .await;
    // The session is lost while they wait: their tasks are dropped.
    assert!(app.kill_worker_connection() >= 1);
    let mut done = std::collections::BTreeSet::new();
    while done.len() < 3 {
        done.insert(app.next_event().await.completed().job_id.clone());
    }
    wait_for("the gauge to settle", Duration::from_secs(5), || async {
        app.metric("tts_jobs_in_flight").await == Some(0.0)
    })
    .await;
    assert_eq!(
        app.sim.stats().submits_accepted,
        3,
        "resumed, not paid twice"
    );
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn losing_the_publishing_channel_ends_the_session_and_reconnects() {
    let app = spawn_app().await;
    app.publish_json(json!({"text": "before", "job_id": "pub-0"}))
        .await;
    app.next_event().await.completed();
    // Deleting the events exchange makes the broker close the worker's
    // publishing channel at its next publish (404), while its connection and
    // consuming channel stay up.
    app.channel
        .exchange_delete(
            app.settings.amqp.events_exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let readiness = {
        let addr = app.ops_addr;
        tokio::spawn(async move {
            // Record whether /readyz ever reports the lost session.
            for _ in 0..400 {
                if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
                    && r.status() == 503
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            false
        })
    };
    app.publish_json(json!({"text": "after", "job_id": "pub-1"}))
        .await;
    // The new session re-declares the exchange and its binding, and the
    // requeued job completes (from storage: it was paid once).
    let received = app.next_event().await;
    assert_eq!(received.completed().job_id, "pub-1");
    assert!(
        readiness.await.unwrap(),
        "/readyz reported the lost session"
    );
    assert_eq!(app.sim.stats().submits_accepted, 2);
    assert!(
        app.metric("tts_requeues_total{reason=\"publish_failed\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(app.stop().await, 0);
}

/// The requests queue declares its delivery limit and dead-letter target, so
/// RabbitMQ 3.10 (no default limit) and 4.x (a default of 20, *dropping*
/// messages past it when no target is set) both move a message that is never
/// settled — one that kills every worker before it can publish its `poison`
/// event — to the dead-letter queue after `max_deliveries + 1` deliveries.
#[tokio::test]
async fn past_the_brokers_delivery_limit_a_message_is_dead_lettered_not_dropped() {
    let mut app = spawn_app_with(|_| {}, |s| s.jobs.max_deliveries = 1).await;
    // The worker declared the topology; without it nothing settles the
    // message but the rejects below, as crashes would.
    app.stop_worker().await;
    app.publish_raw(b"kills every worker", Default::default())
        .await;
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while deliveries < 25 && tokio::time::Instant::now() < deadline {
        let got = app
            .channel
            .basic_get(
                app.requests_queue().into(),
                lapin::options::BasicGetOptions::default(),
            )
            .await
            .expect("basic.get");
        match got {
            Some(message) => {
                deliveries += 1;
                message
                    .delivery
                    .acker
                    // A counted return on every version (RabbitMQ 4.3 no
                    // longer counts a nack), like a crash's closed channel.
                    .reject(lapin::options::BasicRejectOptions { requeue: true })
                    .await
                    .unwrap();
            }
            None if app.requests_ready().await == 0 => break,
            None => {}
        }
    }
    assert_eq!(
        deliveries, 3,
        "the broker's limit is max_deliveries + 1 = 2 returns"
    );
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.delivery.data, b"kills every worker".to_vec());
    app.cleanup().await;
}

/// Upgrading a fleet whose requests queue was declared without the delivery
/// limit (an older version): the worker uses the queue as it is, with a
/// warning, instead of failing to start on PRECONDITION_FAILED.
#[tokio::test]
async fn a_requests_queue_declared_by_an_older_version_is_used_as_it_is() {
    let mut app = spawn_app().await;
    app.stop_worker().await;
    let queue = app.requests_queue().to_owned();
    app.channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let mut quorum_only = lapin::types::FieldTable::default();
    quorum_only.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    app.channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::durable(),
            quorum_only,
        )
        .await
        .unwrap();
    app.restart_worker(|_| {}).await;
    app.publish_json(json!({"text": "after the upgrade", "job_id": "upgrade-1"}))
        .await;
    assert_eq!(app.next_event().await.completed().job_id, "upgrade-1");
    assert_eq!(app.stop().await, 0);
}
