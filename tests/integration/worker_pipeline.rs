//! The job pipeline without a broker: a job in, a `JobEnd` out, against the
//! simulator and the real bucket.

use std::sync::Arc;
use std::time::Duration;

use segmind_sim::SimConfig;
use tts_worker::testing::config::{AmbiguousSubmits, Settings};
use tts_worker::testing::failure::{Attempt, ErrorCode};
use tts_worker::testing::job::Outcome;
use tts_worker::testing::metrics::Metrics;
use tts_worker::testing::segmind::SegmindClient;
use tts_worker::testing::wire;
use tts_worker::testing::worker::PauseGate;
use tts_worker::testing::worker::{JobEnd, Pipeline};

use crate::helpers::{storage_for, test_settings};

async fn pipeline(adjust: impl FnOnce(&mut SimConfig)) -> (Pipeline, segmind_sim::SimHandle) {
    pipeline_with(adjust, |_| {}).await
}

pub(crate) async fn pipeline_with(
    adjust: impl FnOnce(&mut SimConfig),
    settings_fn: impl FnOnce(&mut Settings),
) -> (Pipeline, segmind_sim::SimHandle) {
    let mut config = SimConfig::fast("pipeline-key");
    config.espeak = false;
    adjust(&mut config);
    let any = "127.0.0.1:0".parse().unwrap();
    let sim = segmind_sim::spawn(config, any, any).await.unwrap();
    let tag = format!("p-{}", uuid::Uuid::new_v4().simple());
    let mut settings = test_settings(&sim, "pipeline-key", &tag);
    settings_fn(&mut settings);
    let metrics = Metrics::new();
    let segmind = SegmindClient::new(
        &settings.segmind,
        settings.require_api_key().unwrap().clone(),
        metrics.clone(),
    )
    .unwrap();
    let pipeline = Pipeline::new(
        &settings,
        Arc::new(segmind),
        storage_for(&settings),
        metrics.clone(),
        PauseGate::new(metrics),
    );
    (pipeline, sim)
}

pub(crate) fn attempt(number: u32) -> Attempt {
    Attempt { number, pauses: 0 }
}

/// The Segmind request recorded for a one-part job's part, if any.
async fn recorded_request(pipeline: &Pipeline, body: &str) -> Option<String> {
    let j = job(body);
    let part_chars = 3_000;
    let plan = tts_worker::testing::plan::plan(&j.speech.text, part_chars, false);
    match pipeline
        .checkpoints
        .load_plan(&j.id, &j.speech, part_chars, &plan)
        .await
    {
        Ok(tts_worker::testing::checkpoint::Loaded::Found(cp)) => cp.parts[0].request_id.clone(),
        _ => None,
    }
}

fn failed_with(end: &JobEnd) -> Option<ErrorCode> {
    match end {
        JobEnd::Finished(o) => match &**o {
            Outcome::Failed(f) => Some(f.failure.code),
            Outcome::Completed(_) => None,
        },
        _ => None,
    }
}

pub(crate) fn job(body: &str) -> tts_worker::testing::job::TtsJob {
    wire::decode_request(body.as_bytes(), None, &Default::default())
        .job
        .expect("a valid request")
}

#[tokio::test]
async fn the_pipeline_runs_a_job_to_stored_audio_without_a_broker() {
    let (pipeline, sim) = pipeline(|_| {}).await;
    let end = pipeline
        .run(
            &job(r#"{"text":"no broker needed","job_id":"nb-1"}"#),
            attempt(1),
        )
        .await;
    let JobEnd::Finished(outcome) = end else {
        panic!("{end:?}")
    };
    let Outcome::Completed(done) = *outcome else {
        panic!("{outcome:?}")
    };
    let object = pipeline.storage.get(&done.audio.key).await.unwrap();
    assert_eq!(object.bytes.len() as u64, done.audio.size_bytes);
    assert_eq!(object.sha256.as_deref(), Some(done.audio.sha256.as_str()));
    assert_eq!(sim.stats().submits_accepted, 1);

    // Run again: answered from storage, nothing paid.
    let again = pipeline
        .run(
            &job(r#"{"text":"no broker needed","job_id":"nb-1"}"#),
            attempt(2),
        )
        .await;
    let JobEnd::Finished(outcome) = again else {
        panic!("{again:?}")
    };
    assert!(matches!(*outcome, Outcome::Completed(c) if c.served_from_storage));
    assert_eq!(sim.stats().submits_accepted, 1);
}

#[tokio::test]
async fn the_pipeline_reports_failures_and_requeues_transient_ones() {
    let (pipeline, sim) = pipeline(|c| c.latency_mean = Duration::from_millis(50)).await;
    let end = pipeline
        .run(&job(r#"{"text":"unsafe [[sim:rai]]"}"#), attempt(1))
        .await;
    let JobEnd::Finished(outcome) = end else {
        panic!("{end:?}")
    };
    assert!(matches!(*outcome, Outcome::Failed(f) if f.failure.code == ErrorCode::ContentBlocked));

    // Every call answers 502 on this delivery: requeue, not fail.
    sim.inject(&[502; 8]);
    let end = pipeline
        .run(&job(r#"{"text":"flaky upstream"}"#), attempt(1))
        .await;
    assert!(
        matches!(end, JobEnd::Requeue(ErrorCode::UpstreamUnavailable)),
        "{end:?}"
    );
}

#[tokio::test]
async fn a_job_dropped_while_its_submission_is_answered_still_checkpoints_the_paid_request() {
    // Segmind accepts (and bills) the job, then takes 1 s to answer.
    let (pipeline, sim) = pipeline(|c| c.submit_delay = Duration::from_secs(1)).await;
    let pipeline = Arc::new(pipeline);
    let body = r#"{"text":"dropped mid-submit","job_id":"drop-1"}"#;
    let running = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.run(&job(body), attempt(1)).await })
    };
    crate::helpers::wait_for("Segmind to accept the job", Duration::from_secs(10), || {
        let accepted = sim.stats().submits_accepted;
        async move { accepted == 1 }
    })
    .await;
    // The job is dropped before the answer arrives, as when its broker
    // session is lost or shutdown's grace period runs out.
    running.abort();
    crate::helpers::wait_for(
        "the request to be checkpointed",
        Duration::from_secs(10),
        || {
            let pipeline = pipeline.clone();
            async move { recorded_request(&pipeline, body).await.is_some() }
        },
    )
    .await;
    // The redelivery resumes the paid request instead of paying again.
    let end = pipeline.run(&job(body), attempt(2)).await;
    assert!(
        matches!(&end, JobEnd::Finished(o) if matches!(**o, Outcome::Completed(_))),
        "{end:?}"
    );
    assert_eq!(sim.stats().submits_accepted, 1, "paid once");
}

#[tokio::test]
async fn past_the_poll_budget_the_delivery_is_requeued_and_the_next_resumes_the_paid_request() {
    // A 1.5 s job, and a delivery may poll only twice (every 0.2 s at most).
    let (pipeline, sim) = pipeline_with(
        |_| {},
        |s| {
            s.segmind.poll.max_polls = 2;
            s.jobs.max_deliveries = 20;
        },
    )
    .await;
    let body = r#"{"text":"slow but paid for [[sim:latency=1.5]]","job_id":"budget-1"}"#;
    let end = pipeline.run(&job(body), attempt(1)).await;
    assert!(
        matches!(end, JobEnd::Requeue(ErrorCode::Timeout)),
        "a spent poll budget requeues the delivery: {end:?}"
    );
    assert!(
        recorded_request(&pipeline, body).await.is_some(),
        "the paid request is kept"
    );
    // Later deliveries resume it (each spends its two polls) until it is done.
    let mut end = end;
    for n in 2..=20 {
        end = pipeline.run(&job(body), attempt(n)).await;
        if !matches!(end, JobEnd::Requeue(_)) {
            break;
        }
    }
    assert!(
        matches!(&end, JobEnd::Finished(o) if matches!(**o, Outcome::Completed(_))),
        "{end:?}"
    );
    assert_eq!(sim.stats().submits_accepted, 1, "paid once");
}

#[tokio::test]
async fn an_answer_lost_after_the_submission_was_accepted_is_counted_and_by_default_retried() {
    let (pipeline, sim) = pipeline(|_| {}).await;
    sim.inject_accept_then(&[504]);
    let end = pipeline
        .run(&job(r#"{"text":"ambiguous by default"}"#), attempt(1))
        .await;
    assert_eq!(failed_with(&end), None, "{end:?}");
    assert_eq!(
        sim.stats().submits_accepted,
        2,
        "retrying an ambiguous submission can pay twice: the documented window"
    );
    assert_eq!(pipeline.metrics.submit_ambiguous.get(), 1);
}

#[tokio::test]
async fn with_ambiguous_submits_fail_an_accepted_but_unanswered_submission_is_not_paid_twice() {
    let (pipeline, sim) = pipeline_with(
        |_| {},
        |s| s.segmind.ambiguous_submits = AmbiguousSubmits::Fail,
    )
    .await;
    sim.inject_accept_then(&[504]);
    let end = pipeline
        .run(&job(r#"{"text":"ambiguous, not retried"}"#), attempt(1))
        .await;
    assert_eq!(
        failed_with(&end),
        Some(ErrorCode::SubmissionUnconfirmed),
        "{end:?}"
    );
    assert_eq!(sim.stats().submits_accepted, 1, "not paid twice");
    assert_eq!(pipeline.metrics.submit_ambiguous.get(), 1);
    // A failure that provably sent nothing is still retried under this policy.
    sim.inject(&[503, 429]);
    let end = pipeline
        .run(&job(r#"{"text":"refused before acceptance"}"#), attempt(1))
        .await;
    assert_eq!(failed_with(&end), None, "{end:?}");
    assert_eq!(sim.stats().submits_accepted, 2);
    assert_eq!(pipeline.metrics.submit_ambiguous.get(), 1);
}

#[tokio::test]
async fn an_output_key_into_the_workers_own_objects_is_refused_before_anything_is_paid() {
    let (pipeline, sim) = pipeline(|_| {}).await;
    // A real checkpoint another job left.
    let victim = r#"{"text":"the victim","job_id":"victim-1"}"#;
    let done = pipeline.run(&job(victim), attempt(1)).await;
    assert_eq!(failed_with(&done), None, "{done:?}");
    let parts_dir = pipeline.checkpoints.parts_dir(&job(victim).id);
    let (checkpoint_key, _) = pipeline.storage.list(&parts_dir).await.unwrap()[0].clone();
    let before = pipeline.storage.get(&checkpoint_key).await.unwrap().bytes;
    let attack = format!(r#"{{"text":"overwrite it","output_key":"{checkpoint_key}"}}"#);
    let end = pipeline.run(&job(&attack), attempt(1)).await;
    assert_eq!(
        failed_with(&end),
        Some(ErrorCode::OutputKeyForbidden),
        "{end:?}"
    );
    let after = pipeline.storage.get(&checkpoint_key).await.unwrap().bytes;
    assert_eq!(before, after, "the checkpoint is untouched");
    assert_eq!(
        sim.stats().submits_accepted,
        1,
        "the refused job paid nothing"
    );
}

#[tokio::test]
async fn an_output_key_holding_another_jobs_audio_is_refused_and_not_overwritten() {
    let (pipeline, sim) = pipeline(|c| c.latency_mean = std::time::Duration::from_millis(50)).await;
    let key = format!("shared-{}/take.wav", uuid::Uuid::new_v4().simple());
    let first = format!(r#"{{"text":"first come","job_id":"owner-1","output_key":"{key}"}}"#);
    let end = pipeline.run(&job(&first), attempt(1)).await;
    assert_eq!(failed_with(&end), None, "{end:?}");
    let original = pipeline.storage.get(&key).await.unwrap();
    // Another job asks for the same key: refused before it pays.
    let second = format!(r#"{{"text":"second comer","job_id":"other-2","output_key":"{key}"}}"#);
    let end = pipeline.run(&job(&second), attempt(1)).await;
    assert_eq!(
        failed_with(&end),
        Some(ErrorCode::OutputKeyTaken),
        "{end:?}"
    );
    // No message names another job (it would tell a producer whose key it is).
    assert!(!format!("{end:?}").contains("owner-1"), "{end:?}");
    assert_eq!(sim.stats().submits_accepted, 1);
    // The same job again is answered from its stored object, untouched.
    let end = pipeline.run(&job(&first), attempt(2)).await;
    assert_eq!(failed_with(&end), None, "{end:?}");
    let now = pipeline.storage.get(&key).await.unwrap();
    assert_eq!(
        now.sha256, original.sha256,
        "the first job's audio is still there"
    );
}

#[tokio::test]
async fn a_key_taken_while_the_job_was_at_segmind_is_not_overwritten_by_its_upload() {
    // The key is free when the job starts and taken before its audio is ready:
    // the owner check right before the upload notices (on Garage, which
    // ignores `If-None-Match`, it is the only guard).
    let (pipeline, _sim) = pipeline(|_| {}).await;
    let pipeline = Arc::new(pipeline);
    let key = format!("race-{}/take.wav", uuid::Uuid::new_v4().simple());
    let body = format!(
        r#"{{"text":"slow writer [[sim:latency=1.5]]","job_id":"slow-1","output_key":"{key}"}}"#
    );
    let running = {
        let (pipeline, body) = (pipeline.clone(), body.clone());
        tokio::spawn(async move { pipeline.run(&job(&body), attempt(1)).await })
    };
    crate::helpers::wait_for("the job to be submitted", Duration::from_secs(10), || {
        let (pipeline, body) = (pipeline.clone(), body.clone());
        async move { recorded_request(&pipeline, &body).await.is_some() }
    })
    .await;
    let squatter = b"someone else's object".to_vec();
    pipeline
        .storage
        .put_bytes(&key, squatter.clone(), "application/octet-stream")
        .await
        .unwrap();
    let end = running.await.unwrap();
    assert_eq!(
        failed_with(&end),
        Some(ErrorCode::OutputKeyTaken),
        "{end:?}"
    );
    let kept = pipeline.storage.get(&key).await.unwrap();
    assert_eq!(kept.bytes.as_ref(), squatter.as_slice(), "not overwritten");
}
