//! Chaos suite: several worker processes against real RabbitMQ and Garage and
//! a fault-injecting simulator, while workers are killed with SIGKILL, the
//! broker restarts, Garage stops for ~10 s (kills come at random moments), and 429/5xx bursts and empty
//! audio are injected. Asserts that every job ends in exactly one terminal
//! event (copies share one CloudEvents `id`), that none is lost, that jobs are
//! not paid for twice beyond the documented crash window, and that every
//! completion points at an intact object.
//!
//! Runs as its own test binary (after the others, never beside them: it
//! restarts the broker). Scale with TTS_CHAOS_JOBS (default 300) and
//! TTS_CHAOS_WORKERS (default 3).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection};
use secrecy::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tts_worker::broker::{self, Publisher};
use tts_worker::config::Settings;
use tts_worker::storage::Storage;
use tts_worker::wire::{self, EventData};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

mod common;
use common::{env_value, stack_env};

struct Chaos {
    tag: String,
    env: Vec<(String, String)>,
    logs: PathBuf,
    workers: Vec<Child>,
    spawned: usize,
}

impl Chaos {
    fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        let tag = &self.tag;
        for (k, v) in [
            ("TTS__AMQP__REQUESTS_QUEUE", format!("{tag}.requests")),
            ("TTS__AMQP__EVENTS_EXCHANGE", format!("{tag}.events")),
            ("TTS__AMQP__EVENTS_QUEUE", format!("{tag}.events")),
            (
                "TTS__AMQP__DEAD_LETTER_QUEUE",
                format!("{tag}.requests.dead"),
            ),
            ("TTS__AMQP__MAX_IN_FLIGHT", "16".into()),
            ("TTS__S3__PREFIX", format!("{tag}/")),
            ("TTS__S3__MAX_ATTEMPTS", "2".into()),
            ("TTS__SEGMIND__POLL_PRIOR_LATENCY", "0.3".into()),
            ("TTS__SEGMIND__POLL_PRIOR_SPREAD", "0.15".into()),
            ("TTS__SEGMIND__POLL_TARGET_LAG", "0.2".into()),
            ("TTS__SEGMIND__POLL_MAX", "0.5".into()),
            ("TTS__SEGMIND__RETRY_BASE", "0.1".into()),
            ("TTS__SEGMIND__RETRY_MAX", "2".into()),
            ("TTS__SEGMIND__JOB_DEADLINE", "60".into()),
            ("TTS__JOBS__MAX_DELIVERIES", "20".into()),
            ("TTS__JOBS__REQUEUE_DELAY", "0.5".into()),
            ("TTS__SHUTDOWN__GRACE_PERIOD", "2".into()),
            ("TTS__HTTP__ADDR", "127.0.0.1:0".into()),
            ("RUST_LOG", "info".into()),
        ] {
            env.push((k.into(), v));
        }
        env
    }

    fn spawn_worker(&mut self) -> Child {
        self.spawned += 1;
        let log =
            std::fs::File::create(self.logs.join(format!("worker-{}.log", self.spawned))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_tts-worker"))
            .arg("run")
            .env_clear()
            .envs(self.worker_env())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("worker starts")
    }

    /// After a random pause of up to `max_wait`, SIGKILL worker `i` and start
    /// a replacement.
    async fn kill_and_replace(&mut self, i: usize, max_wait: Duration) {
        let wait = rand::random_range(0.0..=max_wait.as_secs_f64());
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        eprintln!("[chaos] SIGKILL worker {i} at +{wait:.2} s");
        let _ = self.workers[i].start_kill();
        let _ = self.workers[i].wait().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.workers[i] = self.spawn_worker();
    }
}

fn sh(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

type Seen = BTreeMap<String, Vec<(String, EventData)>>;

/// Reads events (acking them) until every job has one and three more seconds
/// have passed for late copies; reconnects across the broker restart.
async fn collect_events(queue: String, jobs: usize) -> Seen {
    let mut seen = Seen::new();
    let mut session: Option<(Connection, lapin::Channel)> = None;
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= give_up || settle_until.is_some_and(|t| now >= t) {
            return seen;
        }
        if settle_until.is_none() && seen.len() >= jobs {
            settle_until = Some(now + Duration::from_secs(3));
        }
        if session.is_none() {
            session = connect().await;
        }
        let Some((_, ch)) = &session else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        match ch
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await
        {
            Ok(Some(msg)) => {
                let event = wire::decode_event(&msg.delivery.data).expect("a valid event");
                seen.entry(event.subject.clone())
                    .or_default()
                    .push((event.id.clone(), event.data));
                let _ = msg.delivery.acker.ack(BasicAckOptions::default()).await;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => {
                session = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn connect() -> Option<(Connection, lapin::Channel)> {
    let url = SecretString::from(AMQP_URL);
    let conn = broker::connect(&url, Duration::from_secs(5), "chaos-test")
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    Some((conn, ch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_no_job_lost_none_finished_twice_none_paid_twice() {
    let jobs: usize = std::env::var("TTS_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let n_workers: usize = std::env::var("TTS_CHAOS_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let started = Instant::now();
    let tag = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&tag);
    std::fs::create_dir_all(&logs).unwrap();
    let mut env = stack_env();
    env.retain(|(k, _)| !k.starts_with("TTS__AMQP__") && k != "SEGMIND_API_KEY" && k != "RUST_LOG");

    // The simulator, in this process (the workers are the processes under
    // test): ~1.5 s jobs, 2% random 5xx. With 16 jobs in flight per worker
    // the run spans every fault below.
    let key = format!("sk-chaos-{}", uuid::Uuid::new_v4().simple());
    let mut sim_config = segmind_sim::SimConfig::fast(&key);
    sim_config.latency_mean = Duration::from_millis(1500);
    sim_config.fault_rate = 0.02;
    sim_config.espeak = false;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = segmind_sim::spawn(sim_config, any, any)
        .await
        .expect("simulator starts");
    let sim_base = sim.base_url();
    env.push(("SEGMIND_API_KEY".into(), key.clone()));
    env.push(("TTS__SEGMIND__BASE_URL".into(), sim_base.clone()));
    env.push(("TTS__AMQP__URL".into(), AMQP_URL.into()));
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("{sim_base}/_sim/stats"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut chaos = Chaos {
        tag: tag.clone(),
        env,
        logs: logs.clone(),
        workers: Vec::new(),
        spawned: 0,
    };
    for _ in 0..n_workers {
        let w = chaos.spawn_worker();
        chaos.workers.push(w);
    }

    // Declare the topology (as the workers do) and publish every job.
    let (conn, channel) = connect().await.expect("broker up");
    let settings = Settings::load_from(None, &chaos.worker_env()).expect("valid settings");
    broker::declare(&channel, &broker::Topology::from(&settings.amqp))
        .await
        .unwrap();
    let publisher = Publisher::new(
        conn.create_channel().await.unwrap(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..jobs {
        let (marker, outcome) = match i % 20 {
            7 => (" [[sim:rai]]", "content_blocked"),
            13 => (" [[sim:empty]]", "audio_invalid"),
            _ => ("", "completed"),
        };
        let job_id = format!("chaos-{i}");
        let body = serde_json::json!({"text": format!("chaos job number {i} says hello{marker}"), "job_id": job_id});
        publisher
            .publish(
                "",
                &settings.amqp.requests_queue,
                body.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
                true,
            )
            .await
            .expect("request confirmed");
        expected.insert(job_id, outcome);
    }
    let _ = conn.close(200, "published".into()).await;

    // Collect events in the background, surviving the broker restart.
    let events_queue = settings.amqp.events_queue.clone().unwrap();
    let collector = tokio::spawn(collect_events(events_queue.clone(), jobs));

    // The faults.
    let mut kills = 0;
    let mut faults_posted = 0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.kill_and_replace(0, Duration::from_secs(2)).await;
    kills += 1;
    let burst = serde_json::json!({"statuses": [429, 429, 502, 504, 500, 429, 503, 502, 429, 504, 500, 429]});
    let post_burst = || {
        http.post(format!("{sim_base}/_sim/faults"))
            .json(&burst)
            .send()
    };
    post_burst().await.unwrap();
    faults_posted += 12;
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos
        .kill_and_replace(1 % n_workers, Duration::from_secs(2))
        .await;
    kills += 1;
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("[chaos] restarting the broker");
    assert!(sh("rabbitmqctl", &["-q", "stop_app"]), "broker stops");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sh("rabbitmqctl", &["-q", "start_app"]), "broker starts");
    let _ = sh("rabbitmqctl", &["-q", "await_startup"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos
        .kill_and_replace(2 % n_workers, Duration::from_secs(2))
        .await;
    kills += 1;
    eprintln!("[chaos] stopping Garage for 10 s");
    let stack = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh");
    assert!(sh(stack, &["down"]), "garage stops");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(sh(stack, &["up"]), "garage starts");
    post_burst().await.unwrap();
    faults_posted += 12;
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.kill_and_replace(0, Duration::from_secs(2)).await;
    kills += 1;

    let seen = collector.await.unwrap();
    let elapsed = started.elapsed();

    // Figures.
    let sim_stats: Value = http
        .get(format!("{sim_base}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let submits_by_text = sim_stats["submits_by_text"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut lost = Vec::new();
    let mut conflicting = Vec::new();
    let mut wrong_outcome = Vec::new();
    let mut copies = 0usize;
    let mut extra_submissions = 0u64;
    let mut paid_twice = Vec::new();
    let mut completed_events = Vec::new();
    for (job_id, want) in &expected {
        let Some(events) = seen.get(job_id) else {
            lost.push(job_id.clone());
            continue;
        };
        let ids: BTreeSet<&String> = events.iter().map(|(id, _)| id).collect();
        copies += events.len() - 1;
        if ids.len() != 1 {
            conflicting.push(job_id.clone());
        }
        let got = match &events[0].1 {
            EventData::Completed(c) => {
                completed_events.push(c.clone());
                "completed".to_owned()
            }
            EventData::Failed(f) => f.error.code.clone(),
        };
        if got != *want {
            wrong_outcome.push(format!("{job_id}: {got} (wanted {want})"));
        }
        if *want != "audio_invalid" {
            let i: usize = job_id.trim_start_matches("chaos-").parse().unwrap();
            let text = format!("chaos job number {i} says hello");
            let n = submits_by_text
                .iter()
                .filter(|(t, _)| t.trim() == text)
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum::<u64>();
            if n > 1 {
                extra_submissions += n - 1;
                paid_twice.push(format!("{job_id}×{n}"));
            }
        }
    }
    // Every completion points at an intact object.
    let storage = Storage::with_static_credentials(
        &settings.s3,
        &env_value(&chaos.env, "AWS_ACCESS_KEY_ID"),
        &env_value(&chaos.env, "AWS_SECRET_ACCESS_KEY"),
    );
    let mut bad_objects = Vec::new();
    for c in &completed_events {
        match storage.get(&c.audio.key).await {
            Ok(o) if hex::encode(Sha256::digest(&o.bytes)) == c.audio.sha256 => {}
            Ok(_) => bad_objects.push(format!("{}: checksum mismatch", c.job_id)),
            Err(e) => bad_objects.push(format!("{}: {e}", c.job_id)),
        }
    }

    // Evidence that the faults hit work in flight, from the workers' logs.
    let mut log_text = String::new();
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("worker-") {
            log_text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    let count = |needle: &str| log_text.matches(needle).count();
    let resumed = count("resuming the Segmind request from the checkpoint");
    let replayed = count("audio already stored; replaying");
    let reconnected = count("reconnected to the broker");
    let requeued = count("requeueing the job for a later delivery");

    let outcome_counts = seen
        .values()
        .fold(BTreeMap::<String, usize>::new(), |mut m, evs| {
            let k = match &evs[0].1 {
                EventData::Completed(_) => "completed".to_owned(),
                EventData::Failed(f) => f.error.code.clone(),
            };
            *m.entry(k).or_default() += 1;
            m
        });
    let report = format!(
        "[chaos] jobs {jobs}, workers {n_workers}, {:.0} s\n\
         [chaos] faults: {kills} SIGKILLs, 1 broker restart, 1 Garage outage of 10 s, {faults_posted} injected 429/5xx, \
         {} random 5xx ({} faults in all at the simulator), {} empty-audio jobs\n\
         [chaos] outcomes {outcome_counts:?}\n\
         [chaos] lost {}, conflicting terminal events {}, event copies (same id) {copies}, wrong outcomes {}, \
         extra Segmind submissions {extra_submissions} {paid_twice:?}, bad objects {}\n\
         [chaos] recovery seen in worker logs: {resumed} resumed from checkpoints, {replayed} replayed from storage, \
         {requeued} requeued (transient), {reconnected} broker reconnections",
        elapsed.as_secs_f64(),
        "2%",
        sim_stats["faults_injected"],
        expected.values().filter(|o| **o == "audio_invalid").count(),
        lost.len(),
        conflicting.len(),
        wrong_outcome.len(),
        bad_objects.len(),
    );
    eprintln!("{report}");
    std::fs::write(logs.join("report.txt"), &report).unwrap();

    // Stop the workers and clean up before asserting, so a failure leaves no
    // processes behind.
    for w in &mut chaos.workers {
        let _ = w.start_kill();
    }
    if let Some((conn, ch)) = connect().await {
        for q in [
            settings.amqp.requests_queue.as_str(),
            settings.amqp.dead_letter_queue.as_str(),
            events_queue.as_str(),
        ] {
            let _ = ch
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "chaos done".into()).await;
    }

    assert!(
        lost.is_empty(),
        "lost jobs: {lost:?} (logs in {})",
        logs.display()
    );
    assert!(
        conflicting.is_empty(),
        "jobs with two different terminal events: {conflicting:?}"
    );
    assert!(
        wrong_outcome.is_empty(),
        "wrong outcomes: {wrong_outcome:?}"
    );
    assert!(bad_objects.is_empty(), "bad objects: {bad_objects:?}");
    // The crash window (SIGKILL or broker loss between Segmind accepting a
    // submission and the checkpoint landing in the bucket) is milliseconds
    // wide, so at most a few jobs per fault may be paid twice.
    let allowed = (kills + 2) as u64;
    assert!(
        extra_submissions <= allowed,
        "{extra_submissions} extra submissions (allowed {allowed}): {paid_twice:?}"
    );
}
