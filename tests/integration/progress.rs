//! Progress of a long job (issue 25, item 5): `tts.job.progress` at most
//! every `jobs.progress_interval`, counts that only grow, on a queue bound
//! to progress events; the default events queue gets none.

use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::json;
use tts_worker::testing::wire::EventData;

use crate::helpers::spawn_app_with;
use crate::long_text::narration;

#[tokio::test]
async fn a_long_job_reports_its_progress_at_the_interval_with_growing_counts() {
    let app = spawn_app_with(
        |sim| {
            sim.latency_mean = Duration::from_millis(900);
            sim.latency_spread = Duration::from_millis(100);
        },
        |s| {
            s.long_text.part_chars = 200;
            s.long_text.max_parallel_parts = 2;
            s.jobs.progress_interval = Duration::from_secs(1);
        },
    )
    .await;
    let progress_queue = format!("{}.progress", app.events_queue());
    app.channel
        .queue_declare(
            progress_queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.channel
        .queue_bind(
            progress_queue.as_str().into(),
            app.settings.amqp.events_exchange.as_str().into(),
            "tts.job.progress.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.publish_json(json!({
        "text": narration(10, 180),
        "job_id": "chapter-progress",
        "metadata": {"tenant": "acme"},
    }))
    .await;
    // The default events queue: the completion, and nothing before it.
    let events_queue = app.events_queue().to_owned();
    let first = app
        .next_any_event_within(&events_queue, Duration::from_secs(90))
        .await
        .expect("the job ends");
    let completed = first.completed();
    let parts = completed.parts;
    assert!(parts >= 10, "{parts} parts");
    let mut reports = Vec::new();
    while let Some(received) = app
        .next_any_event_within(&progress_queue, Duration::from_millis(200))
        .await
    {
        let EventData::Progress(p) = received.event.data else {
            panic!("a terminal event on the progress queue");
        };
        reports.push((Instant::now(), received.event.time.clone(), p));
    }
    println!(
        "{} progress events: {:?}",
        reports.len(),
        reports
            .iter()
            .map(|(_, t, p)| format!(
                "{t} {}/{} {:.1} s",
                p.parts_done, p.parts_total, p.audio_seconds
            ))
            .collect::<Vec<_>>()
    );
    assert!(reports.len() >= 2, "{} progress events", reports.len());
    for (_, _, p) in &reports {
        assert_eq!(p.job_id, "chapter-progress");
        assert_eq!(p.parts_total, parts);
        assert!(p.parts_done <= parts);
        assert_eq!(p.metadata.as_ref().unwrap()["tenant"], "acme");
    }
    for pair in reports.windows(2) {
        let (a, b) = (&pair[0].2, &pair[1].2);
        assert!(
            b.parts_done >= a.parts_done && b.audio_seconds >= a.audio_seconds,
            "counts went down: {a:?} then {b:?}"
        );
        assert!(
            (b.parts_done, b.audio_seconds.to_bits()) != (a.parts_done, a.audio_seconds.to_bits()),
            "an unchanged report was sent again"
        );
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
        let gap = at(&pair[1].1) - at(&pair[0].1);
        assert!(
            gap >= chrono::Duration::milliseconds(950),
            "two reports {gap} apart, under the 1 s interval"
        );
    }
    let last = &reports.last().unwrap().2;
    assert!(
        last.parts_done > reports[0].2.parts_done,
        "no progress reported"
    );
    let completed_seconds = completed.audio.duration_seconds.unwrap();
    assert!(
        last.audio_seconds <= completed_seconds + 1.0,
        "{} s reported of {completed_seconds} s",
        last.audio_seconds
    );
    app.stop().await;
}
