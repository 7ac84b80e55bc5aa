//! The job pipeline without a broker: a job in, a `JobEnd` out, against the
//! simulator and the real bucket.

use std::sync::Arc;
use std::time::Duration;

use segmind_sim::SimConfig;
use tts_worker::failure::ErrorCode;
use tts_worker::job::Outcome;
use tts_worker::metrics::Metrics;
use tts_worker::segmind::SegmindClient;
use tts_worker::wire;
use tts_worker::worker::pause::PauseGate;
use tts_worker::worker::{JobEnd, Pipeline};

use crate::helpers::{storage_for, test_settings};

async fn pipeline(adjust: impl FnOnce(&mut SimConfig)) -> (Pipeline, segmind_sim::SimHandle) {
    let mut config = SimConfig::fast("pipeline-key");
    config.espeak = false;
    adjust(&mut config);
    let any = "127.0.0.1:0".parse().unwrap();
    let sim = segmind_sim::spawn(config, any, any).await.unwrap();
    let tag = format!("p-{}", uuid::Uuid::new_v4().simple());
    let settings = test_settings(&sim, "pipeline-key", &tag);
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

fn job(body: &str) -> tts_worker::job::TtsJob {
    wire::decode_request(body.as_bytes(), None, &Default::default())
        .job
        .expect("a valid request")
}

#[tokio::test]
async fn the_pipeline_runs_a_job_to_stored_audio_without_a_broker() {
    let (pipeline, sim) = pipeline(|_| {}).await;
    let end = pipeline
        .run(&job(r#"{"text":"no broker needed","job_id":"nb-1"}"#), 1)
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
        .run(&job(r#"{"text":"no broker needed","job_id":"nb-1"}"#), 2)
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
        .run(&job(r#"{"text":"unsafe [[sim:rai]]"}"#), 1)
        .await;
    let JobEnd::Finished(outcome) = end else {
        panic!("{end:?}")
    };
    assert!(matches!(*outcome, Outcome::Failed(f) if f.failure.code == ErrorCode::ContentBlocked));

    // Every call answers 502 on this delivery: requeue, not fail.
    sim.inject(&[502; 8]);
    let end = pipeline.run(&job(r#"{"text":"flaky upstream"}"#), 1).await;
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
        tokio::spawn(async move { pipeline.run(&job(body), 1).await })
    };
    crate::helpers::wait_for("Segmind to accept the job", Duration::from_secs(10), || {
        let accepted = sim.stats().submits_accepted;
        async move { accepted == 1 }
    })
    .await;
    // The job is dropped before the answer arrives, as when its broker
    // session is lost or shutdown's grace period runs out.
    running.abort();
    let speech = job(body).speech;
    let id = job(body).id;
    crate::helpers::wait_for(
        "the request to be checkpointed",
        Duration::from_secs(10),
        || {
            let (pipeline, speech, id) = (pipeline.clone(), speech.clone(), id.clone());
            async move { matches!(pipeline.checkpoints.load(&id, &speech).await, Ok(Some(_))) }
        },
    )
    .await;
    // The redelivery resumes the paid request instead of paying again.
    let end = pipeline.run(&job(body), 2).await;
    assert!(
        matches!(&end, JobEnd::Finished(o) if matches!(**o, Outcome::Completed(_))),
        "{end:?}"
    );
    assert_eq!(sim.stats().submits_accepted, 1, "paid once");
}
