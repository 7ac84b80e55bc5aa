//! One engine for every job (issue 22): records bound to their plan, paid
//! parts kept across a failure, one delivery of a job at a time, no
//! orphaned submission, one quality gate for short jobs too, a delivery
//! lifetime below the broker's consumer timeout, and checkpoints written by
//! the previous release resumed without paying again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use segmind_sim::model::{self, OUTPUT_CAP, SpeechModel};
use serde_json::json;
use sha2::Digest;
use tts_worker::testing::checkpoint::{Loaded, PartRecord, PartsCheckpoint, PlanRecord};
use tts_worker::testing::failure::ErrorCode;
use tts_worker::testing::job::{Completed, Outcome};
use tts_worker::testing::worker::{JobEnd, Pipeline};

use crate::helpers::{spawn_app_with, wait_for};
use crate::long_text::{long_text_app, narration};
use crate::worker_pipeline::{attempt, job, pipeline_with};

/// A pipeline (no broker) on a simulator that speaks at a realistic rate,
/// texts cut into parts of `part_chars`.
async fn engine(
    part_chars: usize,
    sim: impl FnOnce(&mut segmind_sim::SimConfig),
) -> (Arc<Pipeline>, segmind_sim::SimHandle) {
    let (pipeline, handle) = pipeline_with(
        |c| {
            c.speech = SpeechModel::Realistic { cap: OUTPUT_CAP };
            sim(c);
        },
        |s| {
            s.long_text.part_chars = part_chars;
            s.long_text.max_parallel_parts = 2;
        },
    )
    .await;
    (Arc::new(pipeline), handle)
}

fn completed(end: JobEnd) -> Completed {
    match end {
        JobEnd::Finished(o) => match *o {
            Outcome::Completed(c) => c,
            Outcome::Failed(f) => panic!("failed: {:?}", f.failure),
        },
        other => panic!("{other:?}"),
    }
}

/// Paragraphs of prose tagged `tag` (so each text's parts differ).
fn tagged(tag: &str, paragraphs: usize, chars_each: usize) -> String {
    narration(paragraphs, chars_each).replace("Paragraph", &format!("{tag} paragraph"))
}

/// Six paragraphs tagged `tag`, each a part that takes `seconds` at Segmind.
fn slow_parts(tag: &str, seconds: u32) -> String {
    tagged(tag, 6, 550)
        .split("\n\n")
        .map(|p| format!("{p} [[sim:latency={seconds}]]"))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Submissions Segmind accepted for texts containing `needle`, by text.
fn paid_for(sim: &segmind_sim::SimHandle, needle: &str) -> Vec<u32> {
    sim.stats()
        .submits_by_text
        .iter()
        .filter(|(text, _)| text.contains(needle))
        .map(|(_, n)| *n)
        .collect()
}

#[tokio::test]
async fn a_job_resent_with_new_text_and_killed_mid_way_delivers_the_new_texts_audio() {
    let (pipeline, sim) = engine(1_000, |_| {}).await;
    let a = tagged("Alpha", 2, 900);
    let body_a = json!({"text": a, "job_id": "resent-1"}).to_string();
    let first = completed(pipeline.run(&job(&body_a), attempt(1)).await);
    assert_eq!(first.parts, 2);

    // The producer corrects the text and resends under the same job id;
    // the delivery dies once some of its parts are paid for.
    let b = tagged("Bravo", 5, 900);
    let body_b = json!({"text": b, "job_id": "resent-1"}).to_string();
    let running = {
        let (pipeline, body) = (pipeline.clone(), body_b.clone());
        tokio::spawn(async move { pipeline.run(&job(&body), attempt(1)).await })
    };
    wait_for(
        "two of the new text's parts to be paid",
        Duration::from_secs(20),
        || {
            let paid = paid_for(&sim, "Bravo").len();
            async move { paid >= 2 }
        },
    )
    .await;
    running.abort();
    let _ = running.await;

    let second = completed(pipeline.run(&job(&body_b), attempt(2)).await);
    assert!(!second.served_from_storage, "not the first text's replay");
    assert_eq!(second.parts, 5);
    assert_ne!(second.audio.sha256, first.audio.sha256);
    let earlier: HashSet<&String> = first.request_ids.iter().collect();
    assert!(
        second.request_ids.iter().all(|r| !earlier.contains(r)),
        "no take of the first text in the new audio"
    );
    // Its length follows the new text (five paragraphs, not two).
    let object = pipeline.storage.get(&second.audio.key).await.unwrap();
    let seconds =
        crate::audio_check::ffprobe(crate::audio_check::TempFile::new(&object.bytes, "wav").path())
            .duration;
    let expected = model::speech_seconds(&b, "Kore");
    assert!(
        seconds > 0.8 * expected && seconds < 1.2 * expected,
        "{seconds} s delivered for a text of ≈ {expected} s"
    );
    // Every part of the new text paid once, the interruption included.
    let paid = paid_for(&sim, "Bravo");
    assert_eq!(paid.len(), 5, "{paid:?}");
    assert!(paid.iter().all(|n| *n == 1), "{paid:?}");
}

#[tokio::test]
async fn a_late_write_of_an_earlier_plans_records_is_never_used() {
    let (pipeline, sim) = engine(1_000, |_| {}).await;
    let a = tagged("Early", 2, 900);
    let body_a = json!({"text": a, "job_id": "late-1"}).to_string();
    let first = completed(pipeline.run(&job(&body_a), attempt(1)).await);
    let ja = job(&body_a);
    let plan_a = tts_worker::testing::plan::plan(&ja.speech.text, 1_000, false);
    let Loaded::Found(records_a) = pipeline
        .checkpoints
        .load_plan(&ja.id, &ja.speech, 1_000, &plan_a)
        .await
        .unwrap()
    else {
        panic!("the first text's records")
    };
    // The text is corrected: its plan starts (the earlier records go) ...
    let b = tagged("Later", 2, 900);
    let body_b = json!({"text": b, "job_id": "late-1"}).to_string();
    let jb = job(&body_b);
    let plan_b = tts_worker::testing::plan::plan(&jb.speech.text, 1_000, false);
    assert_eq!(plan_b.len(), plan_a.len());
    pipeline
        .checkpoints
        .start_plan(
            &jb.id,
            &PartsCheckpoint::new(&jb.id, &jb.speech, 1_000, &plan_b),
            Some(&records_a.plan),
        )
        .await
        .unwrap();
    // ... and a delivery of the earlier text, still running elsewhere,
    // writes its records afterwards.
    for (index, record) in records_a.parts.iter().enumerate() {
        pipeline
            .checkpoints
            .save_part(&ja.id, index, record)
            .await
            .unwrap();
    }
    pipeline
        .checkpoints
        .save_stitched(&ja.id, records_a.stored.as_ref().unwrap())
        .await
        .unwrap();
    let second = completed(pipeline.run(&jb, attempt(1)).await);
    assert!(!second.served_from_storage, "not the earlier text's replay");
    assert_ne!(second.audio.sha256, first.audio.sha256);
    assert!(
        second
            .request_ids
            .iter()
            .all(|r| !first.request_ids.contains(r)),
        "no take of the earlier text"
    );
    let paid = paid_for(&sim, "Later");
    assert_eq!(paid, vec![1, 1], "each part of the new text paid once");
}

#[tokio::test]
async fn a_part_that_fails_once_is_the_only_part_a_resend_pays_for() {
    let (pipeline, sim) = engine(700, |_| {}).await;
    let mut paragraphs: Vec<String> = tagged("Failing", 6, 550)
        .split("\n\n")
        .map(str::to_owned)
        .collect();
    paragraphs[3].push_str(" [[sim:fail-once]]");
    let text = paragraphs.join("\n\n");
    let body = json!({"text": text, "job_id": "fails-once-1"}).to_string();
    let end = pipeline.run(&job(&body), attempt(1)).await;
    let JobEnd::Finished(outcome) = end else {
        panic!("{end:?}")
    };
    let Outcome::Failed(failed) = *outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failed.failure.code, ErrorCode::InferenceFailed);
    assert!(failed.failure.retryable());
    assert_eq!(sim.stats().submits_accepted, 6, "every part was paid once");

    // The producer resends it: only the failed part is paid again.
    let done = completed(pipeline.run(&job(&body), attempt(1)).await);
    assert_eq!(done.parts, 6);
    assert_eq!(sim.stats().submits_accepted, 7, "the resend paid one part");
}

/// A part split after its take came back at the output cap keeps its
/// pieces' records like parts: a piece that fails once is the only thing a
/// resend pays for, and the split itself is not repeated.
#[tokio::test]
async fn a_split_parts_pieces_are_resumed_like_parts() {
    // At 40 % of its pace the voice runs four paragraphs of ≈ 1,500
    // characters (one part) to ≈ 1,000 s: cut at the cap.
    let (pipeline, sim) = engine(7_000, |c| c.pace = 0.4).await;
    let mut paragraphs: Vec<String> = tagged("Slowly", 5, 1_500)
        .split("\n\n")
        .map(str::to_owned)
        .collect();
    // Fails the first take of any text holding it: the whole part's first,
    // then, once split, the piece's first.
    paragraphs[2].push_str(" [[sim:fail-once]]");
    let text = paragraphs.join("\n\n");
    let body = json!({"text": text, "voice_1": "Kore", "job_id": "split-resume-1"}).to_string();
    let failed = |end: JobEnd| match end {
        JobEnd::Finished(o) => match *o {
            Outcome::Failed(f) => f.failure.code,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    // 1: the first part fails at Segmind, the second is stored.
    let first = failed(pipeline.run(&job(&body), attempt(1)).await);
    assert_eq!(first, ErrorCode::InferenceFailed);
    assert_eq!(sim.stats().submits_accepted, 2);
    // 2: the resend pays the first part again: its take is cut at the cap,
    // so it is split; the piece holding the marker fails, the others are
    // stored.
    let second = failed(pipeline.run(&job(&body), attempt(1)).await);
    assert_eq!(second, ErrorCode::InferenceFailed);
    let after_split = sim.stats().submits_accepted;
    assert!(
        after_split >= 6,
        "{after_split} paid: the part, then its pieces"
    );
    // 3: only that piece is paid again; the split is not redone.
    let done = completed(pipeline.run(&job(&body), attempt(1)).await);
    assert_eq!(sim.stats().submits_accepted, after_split + 1);
    assert_eq!(
        u64::from(done.parts),
        after_split - 2,
        "the pieces and the second part"
    );
    let seconds = done.audio.duration_seconds.unwrap();
    assert!(seconds > 900.0, "{seconds} s: the whole text at that pace");
}

/// A short job (one part) whose take came back at the cap is delivered
/// from its pieces, and a repeat is answered from storage like any other:
/// not rendered again, nothing paid.
#[tokio::test]
async fn a_split_one_part_job_is_answered_from_storage_when_repeated() {
    let (pipeline, sim) = engine(7_000, |c| c.pace = 0.4).await;
    let text = tagged("Once", 4, 1_500);
    let body = json!({"text": text, "voice_1": "Kore", "job_id": "split-once-1"}).to_string();
    let first = completed(pipeline.run(&job(&body), attempt(1)).await);
    assert!(
        first.parts >= 3,
        "{} parts: the one part became its pieces",
        first.parts
    );
    let paid = sim.stats().submits_accepted;
    assert_eq!(
        paid,
        u64::from(first.parts) + 1,
        "the cut take and each piece"
    );
    let again = completed(pipeline.run(&job(&body), attempt(1)).await);
    assert!(
        again.served_from_storage,
        "a repeat is answered from storage"
    );
    assert_eq!(again.audio.sha256, first.audio.sha256);
    assert_eq!(again.parts, first.parts);
    assert_eq!(sim.stats().submits_accepted, paid, "nothing paid again");
}

#[tokio::test]
async fn a_redelivery_waits_for_a_submission_still_running_and_pays_once() {
    // Segmind accepts (and bills) the job, then takes 1 s to answer: the
    // delivery is dropped meanwhile (its broker session was lost) and the
    // redelivery starts at once, while the submission step still runs.
    let (pipeline, sim) = pipeline_with(|c| c.submit_delay = Duration::from_secs(1), |_| {}).await;
    let pipeline = Arc::new(pipeline);
    let body = r#"{"text":"orphaned submission","job_id":"orphan-1"}"#;
    let running = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.run(&job(body), attempt(1)).await })
    };
    wait_for("Segmind to accept the job", Duration::from_secs(10), || {
        let accepted = sim.stats().submits_accepted;
        async move { accepted == 1 }
    })
    .await;
    running.abort();
    let done = completed(pipeline.run(&job(body), attempt(2)).await);
    assert_eq!(done.request_ids.len(), 1);
    assert_eq!(sim.stats().submits_accepted, 1, "paid once");
}

#[tokio::test]
async fn short_jobs_delivered_as_served_pass_the_one_quality_gate() {
    // A third of the jobs' first takes silently cut to 30 % of the speech
    // (a fixed third: the learned rate's median stays a normal take).
    let (pipeline, sim) = engine(3_000, |_| {}).await;
    let sentence = "A short notice about your order and its delivery window today. ";
    let jobs: Vec<String> = (0..36)
        .map(|n| {
            let cut = if n % 3 == 0 {
                " [[sim:truncated-once]]"
            } else {
                ""
            };
            json!({
                "text": format!("Notice {n}. {}{cut}", sentence.repeat(3)),
                "job_id": format!("gate-{n}"),
            })
            .to_string()
        })
        .collect();
    let pipeline_ref = &*pipeline;
    let ends = futures_util::future::join_all(
        jobs.iter()
            .map(|body| async move { (body, pipeline_ref.run(&job(body), attempt(1)).await) }),
    )
    .await;
    let (mut complete, mut invalid) = (0, 0);
    for (body, end) in ends {
        let JobEnd::Finished(outcome) = end else {
            panic!("{end:?}")
        };
        match *outcome {
            Outcome::Completed(done) => {
                complete += 1;
                assert!(done.delivery.is_none(), "delivered as served");
                let text = job(body).speech.text;
                let full = model::speech_seconds(&text, "Kore");
                let object = pipeline.storage.get(&done.audio.key).await.unwrap();
                let seconds = crate::audio_check::ffprobe(
                    crate::audio_check::TempFile::new(&object.bytes, "wav").path(),
                )
                .duration;
                assert!(
                    seconds > 0.6 * full,
                    "{} delivered as complete with {seconds:.1} s of {full:.1} s",
                    done.job_id
                );
            }
            Outcome::Failed(f) => {
                assert_eq!(f.failure.code, ErrorCode::AudioInvalid, "{:?}", f.failure);
                invalid += 1;
            }
        }
    }
    let stats = sim.stats();
    let retries = pipeline.jobs.audio_retries;
    assert!(
        stats.submits_by_text.values().all(|n| *n <= retries + 1),
        "{:?}",
        stats.submits_by_text.values().collect::<Vec<_>>()
    );
    assert!(
        stats.submits_accepted > 36,
        "some takes were truncated and paid again"
    );
    assert_eq!(complete + invalid, 36);
}

#[tokio::test]
async fn a_long_jobs_checkpoints_of_the_previous_release_resume_paid_once() {
    let (pipeline, sim) = engine(700, |_| {}).await;
    let text = tagged("Upgrade", 3, 550);
    let body = json!({"text": text, "job_id": "upgrade-1"}).to_string();
    let j = job(&body);
    let plan = tts_worker::testing::plan::plan(&j.speech.text, 700, false);
    assert_eq!(plan.len(), 3);
    // The previous release planned it and submitted every part, then died:
    // its records carry no plan fingerprint.
    let client = reqwest::Client::new();
    let checkpoints = &pipeline.checkpoints;
    checkpoints
        .save_plan(
            &j.id,
            &PlanRecord {
                job_id: j.id.to_string(),
                fingerprint: tts_worker::testing::checkpoint::fingerprint(&j.speech),
                plan: None,
                part_chars: 700,
                parts: 3,
            },
        )
        .await
        .unwrap();
    for (index, part) in plan.iter().enumerate() {
        let submitted: serde_json::Value = client
            .post(format!("{}/v2/gemini-2.5-pro-tts", sim.base_url()))
            .header("x-api-key", "pipeline-key")
            .json(&json!({"text": part.text.as_str(), "voice_1": "Kore", "temperature": 0.4}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let record = PartRecord {
            request_id: submitted["request_id"].as_str().map(str::to_owned),
            submitted_at: Some(chrono::Utc::now()),
            submissions: 1,
            ..PartRecord::default()
        };
        checkpoints.save_part(&j.id, index, &record).await.unwrap();
    }
    assert_eq!(sim.stats().submits_accepted, 3);
    let done = completed(pipeline.run(&j, attempt(2)).await);
    assert_eq!(done.parts, 3);
    assert_eq!(sim.stats().submits_accepted, 3, "resumed, not paid again");
}

#[tokio::test]
async fn the_same_long_job_published_twice_at_once_pays_each_part_once() {
    let app = long_text_app(700).await;
    let text = tagged("Twice", 8, 550);
    let body = json!({"text": text, "job_id": "twice-1"});
    app.publish_json(body.clone()).await;
    app.publish_json(body).await;
    let first = app.next_event().await.completed().clone();
    let second = app.next_event().await.completed().clone();
    assert_eq!(first.parts, 8);
    assert_eq!(first.audio.key, second.audio.key);
    assert_eq!(first.audio.sha256, second.audio.sha256);
    let paid = paid_for(&app.sim, "Twice");
    assert_eq!(paid.len(), 8, "{paid:?}");
    assert!(
        paid.iter().all(|n| *n == 1),
        "each part paid once: {paid:?}"
    );
    // The object is what the events say.
    let object = app.storage.get(&first.audio.key).await.unwrap();
    assert_eq!(object.bytes.len() as u64, first.audio.size_bytes);
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_job_longer_than_the_delivery_lifetime_is_handed_back_and_completes_paid_once() {
    // Each part takes 2 s at Segmind, two at a time: ≈ 6 s for six parts,
    // with deliveries of 2.5 s. On a broker that takes a consumer-timeout
    // policy, the queue's is set just above the lifetime.
    let app = spawn_app_with(
        |sim| sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP },
        |s| {
            s.long_text.part_chars = 700;
            s.long_text.max_parallel_parts = 2;
            s.jobs.delivery_lifetime = Duration::from_millis(2_500);
            s.amqp.consumer_timeout = Duration::from_secs(10);
        },
    )
    .await;
    let policy = crate::helpers::rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &format!("{}-timeout", app.requests_queue()),
        &format!("^{}$", regex_escape(app.requests_queue())),
        r#"{"consumer-timeout":10000}"#,
    ]);
    let text = slow_parts("Lifetime", 2);
    app.publish_json(json!({"text": text, "job_id": "lifetime-1"}))
        .await;
    for n in 0..5 {
        app.publish_json(
            json!({"text": format!("short neighbour {n}"), "job_id": format!("neighbour-{n}")}),
        )
        .await;
    }
    let mut long = None;
    for _ in 0..6 {
        let received = app
            .next_event_within(app.events_queue(), Duration::from_secs(60))
            .await;
        let data = received.completed().clone();
        if data.job_id == "lifetime-1" {
            long = Some(data);
        } else {
            assert_eq!(data.attempts, 1, "a neighbour was charged: {}", data.job_id);
        }
    }
    let long = long.expect("the long job completed");
    assert_eq!(long.parts, 6);
    let paid = paid_for(&app.sim, "Lifetime");
    assert_eq!(paid.len(), 6, "{paid:?}");
    assert!(
        paid.iter().all(|n| *n == 1),
        "each part paid once: {paid:?}"
    );
    let handed_back = app
        .metric("tts_handovers_total{reason=\"lifetime\"}")
        .await
        .unwrap_or(0.0);
    assert!(handed_back >= 1.0, "the long job outlived a delivery");
    assert_eq!(long.attempts, 1, "hand-backs are not counted");
    if policy {
        crate::helpers::rabbitmqctl(&[
            "clear_policy",
            &format!("{}-timeout", app.requests_queue()),
        ]);
    }
    assert_eq!(app.stop().await, 0);
}

fn regex_escape(name: &str) -> String {
    name.replace('.', "\\.")
}

#[tokio::test]
async fn part_objects_past_the_resume_window_are_swept_and_records_stay() {
    let (pipeline, _sim) = engine(700, |_| {}).await;
    let checkpoints = &pipeline.checkpoints;
    let id = tts_worker::testing::job::JobId::parse("swept-1", 64).unwrap();
    let part = checkpoints.part_audio_key(&id, 0, "r-1");
    pipeline
        .storage
        .put_bytes(&part, b"RIFF....".to_vec(), "audio/wav")
        .await
        .unwrap();
    checkpoints
        .save_part(&id, 0, &PartRecord::default())
        .await
        .unwrap();
    let window = Duration::from_secs(3300);
    // Within the window: kept for a resend.
    assert_eq!(
        checkpoints
            .sweep_parts(window, chrono::Utc::now())
            .await
            .unwrap(),
        0
    );
    assert!(pipeline.storage.head(&part).await.unwrap().is_some());
    // An hour past it: the audio goes, the record stays.
    let later = chrono::Utc::now() + chrono::Duration::seconds(3300 + 3600);
    assert!(checkpoints.sweep_parts(window, later).await.unwrap() >= 1);
    assert!(pipeline.storage.head(&part).await.unwrap().is_none());
    let record = checkpoints.load_part(&id, 0, None).await.unwrap();
    assert!(record.is_some(), "the part's record is kept");
}

#[tokio::test]
async fn two_replicas_given_the_same_long_job_at_once_pay_each_part_once() {
    // One delivery at a time per replica: each replica takes one copy.
    let one_each = |s: &mut tts_worker::testing::config::Settings| {
        s.long_text.part_chars = 700;
        s.long_text.max_parallel_parts = 3;
        s.amqp.max_in_flight = 1;
    };
    let app = spawn_app_with(
        |sim| sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP },
        one_each,
    )
    .await;
    let other = app.start_replica(one_each).await;
    let text = tagged("Replicas", 6, 550);
    let body = json!({"text": text, "job_id": "replicas-1"});
    app.publish_json(body.clone()).await;
    app.publish_json(body).await;
    let first = app.next_event().await.completed().clone();
    let second = app.next_event().await.completed().clone();
    assert_eq!(first.parts, 6);
    assert_eq!(first.audio.key, second.audio.key);
    let paid = paid_for(&app.sim, "Replicas");
    assert_eq!(paid.len(), 6, "{paid:?}");
    assert!(
        paid.iter().all(|n| *n == 1),
        "each part paid once across replicas: {paid:?}"
    );
    // Whichever delivery came second was answered from storage.
    assert!(first.served_from_storage || second.served_from_storage);
    // Each replica settled one of the copies: the lease, not one replica's
    // own turn, kept the second from paying.
    // (Counted once a delivery is settled, just after its event.)
    let completed = "tts_jobs_total{outcome=\"completed\"}";
    wait_for(
        "each replica to settle one copy",
        Duration::from_secs(10),
        || async {
            app.metric(completed).await == Some(1.0) && other.metric(completed).await == Some(1.0)
        },
    )
    .await;
    let object = app.storage.get(&first.audio.key).await.unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&object.bytes)),
        second.audio.sha256
    );
    other.stop().await;
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn short_jobs_finishing_while_long_renders_run_do_not_time_out() {
    // One transfer slot and a 2 s deadline: a short job that waited for a
    // render to give its slot back, with its deadline running, would fail.
    let (pipeline, sim) = pipeline_with(
        |_| {},
        |s| {
            s.long_text.part_chars = 700;
            s.jobs.max_transfers = 1;
            s.jobs.max_renders = 4;
            s.segmind.job_deadline = Duration::from_secs(2);
        },
    )
    .await;
    let pipeline = Arc::new(pipeline);
    let renders: Vec<_> = (0..4)
        .map(|n| {
            let body = json!({
                "version": 2,
                "text": tagged(&format!("Render{n}"), 4, 550),
                "job_id": format!("render-{n}"),
                "format": "mp3",
                "sample_rate": 44_100,
                "loudness_lufs": -16.0,
            })
            .to_string();
            let pipeline = pipeline.clone();
            tokio::spawn(async move { pipeline.run(&job(&body), attempt(1)).await })
        })
        .collect();
    wait_for(
        "every long part to be downloaded (the renders start), or the long jobs to end",
        Duration::from_secs(60),
        || {
            let fetched = sim.stats().media_fetches;
            let ended = renders.iter().all(|r| r.is_finished());
            async move { fetched >= 16 || ended }
        },
    )
    .await;
    let renders_running = renders.iter().filter(|r| !r.is_finished()).count();
    let shorts = futures_util::future::join_all((0..20).map(|n| {
        let pipeline = pipeline.clone();
        async move {
            let body = json!({"text": format!("short job {n}"), "job_id": format!("short-{n}")})
                .to_string();
            pipeline.run(&job(&body), attempt(1)).await
        }
    }))
    .await;
    for end in shorts {
        completed(end);
    }
    for render in renders {
        assert_eq!(completed(render.await.unwrap()).parts, 4);
    }
    assert!(
        renders_running > 0,
        "the short jobs started while renders were running"
    );
}

#[tokio::test]
async fn a_consumer_the_broker_cancels_hands_back_what_it_holds_and_the_job_completes_once() {
    // The worker is told the broker's timeout is RabbitMQ's default (30
    // min) while the queue's policy says 4 s: RabbitMQ 4.3+ cancels the
    // consumer holding the long job (`basic.cancel`). Brokers that do not
    // take the policy key (3.10) have nothing to cancel: this test needs
    // RabbitMQ 4.3 (`scripts/test.sh` runs the suite there too).
    let mut app = spawn_app_with(
        |sim| sim.speech = SpeechModel::Realistic { cap: OUTPUT_CAP },
        |s| {
            s.long_text.part_chars = 700;
            s.long_text.max_parallel_parts = 2;
        },
    )
    .await;
    let name = format!("{}-cancel", app.requests_queue());
    let policy = crate::helpers::rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        &name,
        &format!("^{}$", regex_escape(app.requests_queue())),
        r#"{"consumer-timeout":4000}"#,
    ]);
    let version = crate::helpers::rabbitmqctl_output(&["version"]);
    if !policy || !version.trim().starts_with('4') || version.trim().starts_with("4.0") {
        println!("RabbitMQ {version}: no consumer cancelled for a timeout here; skipped");
        if policy {
            crate::helpers::rabbitmqctl(&["clear_policy", &name]);
        }
        assert_eq!(app.stop().await, 0);
        return;
    }
    // A consumer takes the queue's timeout when it attaches (4.3.6,
    // measured): the worker consumes again under the policy.
    app.restart_worker(|_| {}).await;
    let text = slow_parts("Cancelled", 3);
    app.publish_json(json!({"text": text, "job_id": "cancelled-1"}))
        .await;
    for n in 0..3 {
        app.publish_json(
            json!({"text": format!("short neighbour {n}"), "job_id": format!("bystander-{n}")}),
        )
        .await;
    }
    let mut long = None;
    for _ in 0..4 {
        let received = app
            .next_event_within(app.events_queue(), Duration::from_secs(90))
            .await;
        let data = received.completed().clone();
        if data.job_id == "cancelled-1" {
            long = Some(data);
        } else {
            assert_eq!(data.attempts, 1, "a bystander was charged: {}", data.job_id);
        }
    }
    crate::helpers::rabbitmqctl(&["clear_policy", &name]);
    let long = long.expect("the long job completed");
    assert_eq!(long.parts, 6);
    assert_eq!(
        long.attempts, 1,
        "a cancelled consumer's hand-back is not counted"
    );
    let paid = paid_for(&app.sim, "Cancelled");
    assert_eq!(paid.len(), 6, "{paid:?}");
    assert!(
        paid.iter().all(|n| *n == 1),
        "each part paid once: {paid:?}"
    );
    let cancelled = app
        .metric("tts_handovers_total{reason=\"consumer_cancelled\"}")
        .await
        .unwrap_or(0.0);
    assert!(cancelled >= 1.0, "the broker cancelled the consumer");
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_broker_connection_lost_while_submissions_wait_for_the_rate_budget_pays_each_job_once() {
    // 12 submissions a minute: one every 5 s, the rest waiting for the
    // budget (in their spawned submission steps) when the connection dies.
    let app = spawn_app_with(
        |_| {},
        |s| {
            s.segmind.rate_limit_per_minute = Some(12);
            s.segmind.rate_limit_scope = tts_worker::testing::config::RateScope::Submits;
            s.jobs.max_deliveries = 10;
        },
    )
    .await;
    for n in 0..3 {
        app.publish_json(
            json!({"text": format!("budgeted job {n}"), "job_id": format!("budget-{n}")}),
        )
        .await;
    }
    wait_for(
        "the first submission, the others waiting for the budget",
        Duration::from_secs(20),
        || {
            let accepted = app.sim.stats().submits_accepted;
            async move { accepted >= 1 }
        },
    )
    .await;
    assert!(
        app.kill_worker_connection() >= 1,
        "the worker was connected"
    );
    let mut done = HashSet::new();
    for _ in 0..3 {
        let received = app
            .next_event_within(app.events_queue(), Duration::from_secs(90))
            .await;
        done.insert(received.completed().job_id.clone());
    }
    assert_eq!(done.len(), 3, "{done:?}");
    let paid = paid_for(&app.sim, "budgeted job");
    assert_eq!(paid.len(), 3, "{paid:?}");
    assert!(paid.iter().all(|n| *n == 1), "each job paid once: {paid:?}");
    assert_eq!(app.stop().await, 0);
}

#[tokio::test]
async fn a_job_gives_its_start_slot_back_once_submitted() {
    // One start slot, jobs that take 8 s at Segmind: the slot is what a
    // job holds from its first storage read to its first submission, not
    // while Segmind works, so all three are submitted long before the first
    // is done. (Held to the end, the second would be submitted after 8 s.)
    let (pipeline, sim) = pipeline_with(
        |_| {},
        |s| {
            s.jobs.max_starting = 1;
            s.segmind.job_deadline = Duration::from_secs(60);
        },
    )
    .await;
    let pipeline = Arc::new(pipeline);
    let runs: Vec<_> = (0..3)
        .map(|n| {
            let body = json!({
                "text": format!("start slot job {n} [[sim:latency=8]]"),
                "job_id": format!("start-{n}"),
            })
            .to_string();
            let pipeline = pipeline.clone();
            tokio::spawn(async move { pipeline.run(&job(&body), attempt(1)).await })
        })
        .collect();
    wait_for(
        "the three jobs to be submitted",
        Duration::from_secs(6),
        || {
            let accepted = sim.stats().submits_accepted;
            async move { accepted >= 3 }
        },
    )
    .await;
    assert!(
        runs.iter().all(|r| !r.is_finished()),
        "submitted while the first job still waits on Segmind"
    );
    for run in runs {
        completed(run.await.unwrap());
    }
    assert_eq!(sim.stats().submits_accepted, 3);
}
