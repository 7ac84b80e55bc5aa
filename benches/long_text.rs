//! Long-text benchmark: the worker binary (release build) against real
//! RabbitMQ and Garage and an in-process Segmind simulator speaking at a
//! realistic rate (≈ 15 characters a second by voice).
//!
//! ```text
//! cargo bench --bench long_text -- latency  [--chars 100000] [--latency 6] [--per-char 0.005]
//! cargo bench --bench long_text -- memory   [--chars 200000] [--latency 3]
//!                                           [--format mp3] [--sample-rate 44100] [--lufs -16] [--captions vtt]
//! cargo bench --bench long_text -- fairness [--chars 200000] [--limit 50] [--latency 5]
//! cargo bench --bench long_text -- admission [--jobs 100] [--chars 200000] [--seconds 120]
//! cargo bench --bench long_text -- all
//! ```
//!
//! `latency` runs the same job through two workers side by side: parts in
//! parallel (`long_text.max_parallel_parts` 64: no rate limit, every part
//! at once) and parts one at a time (1); prints each job's latency, its
//! slowest part's time at Segmind (the simulator's own record), and the
//! ratios. `memory` runs one job and prints the worker's idle RSS, its peak
//! while the parts are synthesized and its peak while they are stitched
//! (the phase read from the job's checkpoint: stitching includes the
//! loudness pass and the encoding of a rendered deliverable), and checks the
//! delivered object with ffprobe. `--format`, `--sample-rate`, `--lufs` and
//! `--captions` ask for a deliverable (default: Segmind's WAV, stitched). `fairness` publishes a long job, then a short one,
//! under an account limit of `--limit` calls a minute, and prints when the
//! short job completes and how far the long job was by then. `admission`
//! publishes `--jobs` requests of `--chars` CJK characters at once to one
//! worker with the chart's memory settings (6 transfers of at most 32 MiB,
//! 32 MiB of request bytes, the 768 MiB limit) and, in the same run, to one
//! whose byte budget is out of the way (4 GiB: admission by count alone, as
//! before `amqp.max_bytes_in_flight`); for `--seconds` each, it prints the
//! peak RSS, the jobs admitted at once and the parts synthesized. (Running
//! them to completion is out of reach here: 100 × 200,000 CJK characters are
//! ≈ 800 hours of speech, ≈ 140 GB of 24 kHz parts.)

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Connection};
use segmind_sim::model::{OUTPUT_CAP, SpeechModel};
use segmind_sim::{SimConfig, SimHandle};
use serde_json::Value;
use tts_worker::testing::broker::{self, Publisher, Topology};
use tts_worker::testing::config::Settings;
use tts_worker::testing::storage::Storage;
use tts_worker::testing::wire::{self, EventData};

const API_KEY: &str = "sk-bench-not-a-secret";

#[derive(Clone)]
struct Args {
    mode: String,
    chars: usize,
    latency: f64,
    per_char: f64,
    limit: u32,
    /// The deliverable's request fields (`format`, …).
    deliverable: serde_json::Map<String, Value>,
}

fn args() -> Args {
    let cli = common::BenchArgs::from_env();
    let mode = cli.mode("all");
    let num = |name: &str, default: f64| cli.num(name, default);
    let default_chars = if mode == "latency" {
        100_000.0
    } else {
        200_000.0
    };
    Args {
        chars: num("--chars", default_chars) as usize,
        latency: num("--latency", 0.0),
        per_char: num(
            "--per-char",
            if mode == "latency" || mode == "all" {
                0.005
            } else {
                0.0
            },
        ),
        limit: num("--limit", 50.0) as u32,
        deliverable: {
            let mut d = serde_json::Map::new();
            d.insert("version".into(), 2.into());
            if let Some(f) = cli.get("--format") {
                d.insert("format".into(), f.into());
            }
            if let Some(r) = cli.get("--sample-rate").and_then(|r| r.parse::<u32>().ok()) {
                d.insert("sample_rate".into(), r.into());
            }
            if let Some(l) = cli.get("--lufs").and_then(|l| l.parse::<f64>().ok()) {
                d.insert("loudness_lufs".into(), l.into());
            }
            if let Some(c) = cli.get("--captions") {
                d.insert("captions".into(), Value::from(vec![c]));
            }
            d
        },
        mode,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args();
    match args.mode.as_str() {
        "latency" => latency(&args).await,
        "memory" => memory(&args).await,
        "fairness" => fairness(&args).await,
        "admission" => admission(&args).await,
        "all" => {
            let with = |chars| Args {
                mode: args.mode.clone(),
                chars,
                deliverable: args.deliverable.clone(),
                ..args
            };
            latency(&with(100_000)).await?;
            memory(&with(200_000)).await?;
            fairness(&with(200_000)).await
        }
        other => bail!("unknown mode {other:?}: latency, memory, fairness, admission or all"),
    }
}

/// Prose in paragraphs, `chars` characters long.
fn narration(chars: usize) -> String {
    let sentence = "The river bends past the old mill, and the light turns gold over the fields. ";
    let mut text = String::with_capacity(chars + 100);
    let mut n = 0;
    while text.len() < chars {
        text.push_str(&format!("Paragraph {n}. "));
        for _ in 0..8 {
            text.push_str(sentence);
        }
        text.push_str("\n\n");
        n += 1;
    }
    text.truncate(chars);
    text.trim_end().to_owned()
}

fn sim_config(latency: f64, per_char: f64) -> SimConfig {
    let mut config = SimConfig::fast(API_KEY);
    config.espeak = false;
    config.speech = SpeechModel::Realistic { cap: OUTPUT_CAP };
    config.latency_mean = Duration::from_secs_f64(latency);
    config.latency_spread = Duration::from_secs_f64(latency / 10.0);
    config.latency_per_char = Duration::from_secs_f64(per_char);
    config
}

/// A worker process with its own queues and prefix.
struct Worker {
    child: tokio::process::Child,
    settings: Settings,
    storage: Storage,
    channel: Channel,
    publisher: Publisher,
    _connection: Connection,
}

impl Worker {
    async fn start(name: &str, sim: &SimHandle, vars: &[(&str, String)]) -> anyhow::Result<Self> {
        let env = common::stack_env();
        let tag = format!("bench-{name}-{}", uuid::Uuid::new_v4().simple());
        let mut worker_env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| {
                (!k.starts_with("TTS__") || k.starts_with("TTS__S3__") || k == "TTS__AMQP__URL")
                    && !k.starts_with("OTEL_")
                    && k != "SEGMIND_API_KEY"
            })
            .collect();
        for (k, v) in [
            ("SEGMIND_API_KEY", API_KEY.to_owned()),
            ("TTS__SEGMIND__BASE_URL", sim.base_url()),
            (
                "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
                sim.media_addr.to_string(),
            ),
            ("TTS__AMQP__REQUESTS_QUEUE", format!("{tag}.requests")),
            ("TTS__AMQP__EVENTS_EXCHANGE", format!("{tag}.events")),
            ("TTS__AMQP__EVENTS_QUEUE", format!("{tag}.events")),
            ("TTS__AMQP__DEAD_LETTER_QUEUE", format!("{tag}.dead")),
            ("TTS__S3__PREFIX", format!("{tag}/")),
            ("TTS__HTTP__ADDR", "127.0.0.1:0".into()),
            ("TTS__SEGMIND__POLL_MAX", "1".into()),
            ("TTS__SEGMIND__JOB_DEADLINE", "1200".into()),
            ("RUST_LOG", "warn".into()),
        ] {
            worker_env.push((k.into(), v));
        }
        worker_env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let settings = Settings::load_from(None, &worker_env)?;
        let connection = broker::connect(&settings.amqp.url, Duration::from_secs(10), "bench")
            .await
            .context("broker")?;
        broker::declare(&connection, &Topology::from(&settings)).await?;
        let channel = connection.create_channel().await?;
        let publisher =
            Publisher::new(connection.create_channel().await?, Duration::from_secs(10)).await?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
            .arg("run")
            .env_clear()
            .envs(worker_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the worker (cargo bench builds it)")?;
        let stack = common::stack_env();
        let storage = Storage::with_static_credentials(
            &settings.s3,
            &common::env_value(&stack, "AWS_ACCESS_KEY_ID"),
            &common::env_value(&stack, "AWS_SECRET_ACCESS_KEY"),
        );
        Ok(Worker {
            child,
            settings,
            storage,
            channel,
            publisher,
            _connection: connection,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn publish(&self, job_id: &str, text: &str) -> anyhow::Result<Instant> {
        self.publish_with(job_id, text, &serde_json::Map::new())
            .await
    }

    async fn publish_with(
        &self,
        job_id: &str,
        text: &str,
        deliverable: &serde_json::Map<String, Value>,
    ) -> anyhow::Result<Instant> {
        let mut body = serde_json::json!({"text": text, "job_id": job_id, "voice_1": "Kore"});
        for (k, v) in deliverable {
            body[k] = v.clone();
        }
        self.publisher
            .publish(
                "",
                &self.settings.amqp.requests_queue,
                body.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
                true,
            )
            .await?;
        Ok(Instant::now())
    }

    /// The next event, if one is there.
    async fn poll_event(&self) -> anyhow::Result<Option<wire::CloudEvent<EventData>>> {
        let queue = self.settings.amqp.events_queue.clone().unwrap_or_default();
        match self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await?
        {
            Some(msg) => {
                let event = wire::decode_event(&msg.delivery.data)?;
                msg.delivery.acker.ack(BasicAckOptions::default()).await?;
                Ok(Some(event))
            }
            None => Ok(None),
        }
    }

    /// (parts, stored, stitched) from the job's checkpoint
    /// (`{prefix}_parts/{job}/`: `plan.json`, the part records
    /// `NNNNN.{plan}.json` named after the plan's fingerprint's first 16
    /// digits, `stitched.json`).
    async fn phase(&self, job_id: &str) -> Option<(usize, usize, bool)> {
        let dir = format!("{}_parts/{job_id}/", self.settings.s3.prefix);
        let read = |key: String| async move {
            let bytes = self.storage.get_optional(&key).await.ok()??;
            serde_json::from_slice::<Value>(&bytes).ok()
        };
        let plan = read(format!("{dir}plan.json")).await?;
        let parts = plan["parts"].as_u64()? as usize;
        let stamp: String = plan["plan"].as_str()?.chars().take(16).collect();
        let mut stored = 0;
        for i in 0..parts {
            if read(format!("{dir}{i:05}.{stamp}.json"))
                .await
                .is_some_and(|r| !r["audio"].is_null())
            {
                stored += 1;
            }
        }
        let stitched = read(format!("{dir}stitched.json")).await.is_some();
        Some((parts, stored, stitched))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        for q in [
            Some(self.settings.amqp.requests_queue.clone()),
            Some(self.settings.amqp.dead_letter_queue.clone()),
            self.settings.amqp.events_queue.clone(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn completed(event: &wire::CloudEvent<EventData>) -> anyhow::Result<&wire::CompletedData> {
    match &event.data {
        EventData::Completed(c) => Ok(c),
        EventData::Failed(f) => bail!("the job failed: {} {}", f.error.code, f.error.message),
        // The default events queue is not bound to progress events.
        EventData::Progress(p) => bail!("a progress event of {} on the events queue", p.job_id),
    }
}

async fn latency(args: &Args) -> anyhow::Result<()> {
    // Segmind's time grows with the text: 6 s + 5 ms a character (≈ 21 s
    // for a 3,000-character part, ≈ 200 s of audio; Segmind's mean for a
    // short text is ≈ 43 s) by default. The stitch moves the audio three
    // times through S3 (≈ 300 MB for 100,000 characters), which this
    // machine does in ≈ 10–20 s: with parts much faster than that the
    // ratio measures the storage, not the parallelism.
    let base = if args.latency > 0.0 {
        args.latency
    } else {
        6.0
    };
    let sim = segmind_sim::spawn(
        sim_config(base, args.per_char),
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let parallel = Worker::start(
        "parallel",
        &sim,
        &[("TTS__LONG_TEXT__MAX_PARALLEL_PARTS", "64".into())],
    )
    .await?;
    let serial = Worker::start(
        "serial",
        &sim,
        &[("TTS__LONG_TEXT__MAX_PARALLEL_PARTS", "1".into())],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = narration(args.chars);
    println!(
        "latency: one job of {} characters, parts of 3000, Segmind {base} s + {} s a character, no rate limit",
        args.chars, args.per_char
    );
    let t_parallel = parallel.publish("long-parallel", &text).await?;
    let t_serial = serial.publish("long-serial", &text).await?;
    let mut done_parallel: Option<(f64, wire::CompletedData)> = None;
    let mut done_serial: Option<(f64, wire::CompletedData)> = None;
    let give_up = Instant::now() + Duration::from_secs(3600);
    while done_parallel.is_none() || done_serial.is_none() {
        if Instant::now() > give_up {
            bail!("the jobs did not finish within an hour");
        }
        if done_parallel.is_none()
            && let Some(e) = parallel.poll_event().await?
        {
            let secs = t_parallel.elapsed().as_secs_f64();
            done_parallel = Some((secs, completed(&e)?.clone()));
            println!("  parts in parallel: done in {secs:.1} s");
        }
        if done_serial.is_none()
            && let Some(e) = serial.poll_event().await?
        {
            let secs = t_serial.elapsed().as_secs_f64();
            done_serial = Some((secs, completed(&e)?.clone()));
            println!("  parts one at a time: done in {secs:.1} s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (p_secs, p) = done_parallel.unwrap_or_else(|| unreachable!());
    let (s_secs, s) = done_serial.unwrap_or_else(|| unreachable!());
    let stats = sim.stats();
    let slowest = p
        .segmind
        .request_ids
        .iter()
        .filter_map(|id| stats.requests.get(id).and_then(|r| r.latency_ms))
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    println!(
        "  {} parts; {:.0} s of audio ({:.0} MB); slowest part at Segmind {slowest:.1} s",
        p.parts,
        p.audio.duration_seconds.unwrap_or(0.0),
        p.audio.size_bytes as f64 / 1e6
    );
    let ratio = p_secs / slowest.max(1e-9);
    println!(
        "  ratio parallel job / slowest part: {ratio:.2} (target ≤ 2.00); one at a time / parallel: {:.1}×",
        s_secs / p_secs
    );
    println!(
        "  submissions: {} for {} + {} parts",
        stats.submits_accepted, p.parts, s.parts
    );
    parallel.stop().await;
    serial.stop().await;
    if ratio > 2.0 {
        bail!("the parallel job took more than twice its slowest part");
    }
    Ok(())
}

async fn memory(args: &Args) -> anyhow::Result<()> {
    let base = if args.latency > 0.0 {
        args.latency
    } else {
        3.0
    };
    let sim = segmind_sim::spawn(
        sim_config(base, 0.0),
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let worker = Worker::start("memory", &sim, &[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = worker.pid();
    let idle = rss_kib(pid).context("worker RSS")?;
    let text = narration(args.chars);
    let started = worker
        .publish_with("long-memory", &text, &args.deliverable)
        .await?;
    let mut peak_parts = idle;
    let mut peak_stitch = idle;
    let mut last_phase = Instant::now() - Duration::from_secs(1);
    let mut stitching = false;
    let event = loop {
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the job did not finish within an hour");
        }
        let rss = rss_kib(pid).context("worker RSS")?;
        if stitching {
            peak_stitch = peak_stitch.max(rss);
        } else {
            peak_parts = peak_parts.max(rss);
        }
        if last_phase.elapsed() > Duration::from_secs(1) {
            last_phase = Instant::now();
            if let Some((parts, stored, _)) = worker.phase("long-memory").await {
                stitching = stored == parts;
            }
        }
        if let Some(e) = worker.poll_event().await? {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let data = completed(&event)?.clone();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "memory: one job of {} characters ({}): {} parts, {:.0} s of audio ({:.2} hours, {:.0} MB), done in {secs:.0} s",
        args.chars,
        data.audio.format.as_deref().unwrap_or("wav as served"),
        data.parts,
        data.audio.duration_seconds.unwrap_or(0.0),
        data.audio.duration_seconds.unwrap_or(0.0) / 3600.0,
        data.audio.size_bytes as f64 / 1e6
    );
    println!(
        "  worker RSS idle {:.1} MiB; peak while synthesizing parts {:.1} MiB (+{:.1}); peak while stitching {:.1} MiB (+{:.1}, target ≤ +64)",
        mib(idle),
        mib(peak_parts),
        mib(peak_parts.saturating_sub(idle)),
        mib(peak_stitch),
        mib(peak_stitch.saturating_sub(idle)),
    );
    println!(
        "  audio / stitch memory: {:.0}×",
        data.audio.size_bytes as f64 / (peak_stitch.saturating_sub(idle).max(1) as f64 * 1024.0)
    );
    // An independent decoder reads the whole object's header and length.
    let object = worker.storage.get(&data.audio.key).await?;
    let extension = data.audio.key.rsplit('.').next().unwrap_or("wav");
    let path = std::env::temp_dir().join(format!("tts-bench-long.{extension}"));
    std::fs::write(&path, &object.bytes)?;
    drop(object);
    let ffprobe = std::env::var("TTS_FFPROBE").unwrap_or_else(|_| "ffprobe".into());
    let out = std::process::Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()?;
    let _ = std::fs::remove_file(&path);
    let probed: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1.0);
    println!(
        "  ffprobe: {probed:.3} s; the event: {:.3} s",
        data.audio.duration_seconds.unwrap_or(0.0)
    );
    worker.stop().await;
    // ffprobe counts an MP3's LAME delay and padding (its Info frame says
    // them; decoders trim them): up to 64 ms at 44.1 kHz.
    let slack = if extension == "mp3" { 0.07 } else { 0.01 };
    if (probed - data.audio.duration_seconds.unwrap_or(0.0)).abs() > slack {
        bail!("ffprobe disagrees with the event");
    }
    if peak_stitch.saturating_sub(idle) > 64 * 1024 {
        bail!("stitching took more than 64 MiB above the idle worker");
    }
    Ok(())
}

/// A CJK chapter, `chars` characters long: sentences of Han characters
/// ending in full stops, paragraphs between them.
fn cjk_chapter(chars: usize, seed: usize) -> String {
    let sentence = "河水绕过古老的磨坊，田野上的光变成了金色。";
    let mut text = format!("第{seed}章。");
    let mut n = 0;
    while text.chars().count() < chars {
        text.push_str(sentence);
        n += 1;
        if n % 8 == 0 {
            text.push_str("\n\n");
        }
    }
    text.chars()
        .take(chars)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// A port free now, for a worker's /metrics.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One sample of a metric from a worker's /metrics on `port`.
async fn metric(port: u16, name: &str) -> Option<f64> {
    common::metric_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), name).await
}

struct AdmissionRun {
    idle_kib: u64,
    peak_kib: u64,
    most_admitted: f64,
    most_bytes: f64,
    parts: u64,
}

async fn admission_run(
    name: &str,
    args: &Args,
    jobs: usize,
    seconds: f64,
    max_bytes: u64,
) -> anyhow::Result<AdmissionRun> {
    let sim = segmind_sim::spawn(
        sim_config(args.latency.max(1.0), 0.0),
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let port = free_port()?;
    let worker = Worker::start(
        name,
        &sim,
        &[
            ("TTS__HTTP__ADDR", format!("127.0.0.1:{port}")),
            ("TTS__JOBS__MAX_TRANSFERS", "6".into()),
            ("TTS__SEGMIND__MAX_AUDIO_BYTES", "33554432".into()),
            ("TTS__AMQP__MAX_BYTES_IN_FLIGHT", max_bytes.to_string()),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = worker.pid();
    let idle_kib = rss_kib(pid).context("worker RSS")?;
    for i in 0..jobs {
        worker
            .publish(&format!("chapter-{i}"), &cjk_chapter(args.chars, i))
            .await?;
    }
    let started = Instant::now();
    let (mut peak_kib, mut most_admitted, mut most_bytes) = (idle_kib, 0.0f64, 0.0f64);
    let mut failed = 0;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        peak_kib = peak_kib.max(rss_kib(pid).context("the worker died")?);
        most_admitted = most_admitted.max(metric(port, "tts_jobs_in_flight").await.unwrap_or(0.0));
        most_bytes = most_bytes.max(
            metric(port, "tts_request_bytes_in_flight")
                .await
                .unwrap_or(0.0),
        );
        while let Some(e) = worker.poll_event().await? {
            if let EventData::Failed(f) = &e.data {
                eprintln!(
                    "  {name}: a job failed: {} {}",
                    f.error.code, f.error.message
                );
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parts = sim.stats().media_fetches;
    worker.stop().await;
    if failed > 0 {
        bail!("{failed} jobs failed");
    }
    Ok(AdmissionRun {
        idle_kib,
        peak_kib,
        most_admitted,
        most_bytes,
        parts,
    })
}

async fn admission(args: &Args) -> anyhow::Result<()> {
    let cli = common::BenchArgs::from_env();
    let jobs = cli.num("jobs", 100.0) as usize;
    let seconds = cli.num("seconds", 120.0);
    let limit_mib = 768.0;
    let body = serde_json::json!({"text": cjk_chapter(args.chars, 0)})
        .to_string()
        .len();
    println!(
        "admission: {jobs} requests of {} CJK characters ({:.0} KB each, {:.0} MB in all) published at once to one worker, {seconds:.0} s each",
        args.chars,
        body as f64 / 1e3,
        (body * jobs) as f64 / 1e6
    );
    let weighed = admission_run("weighed", args, jobs, seconds, 32 << 20).await?;
    let counted = admission_run("counted", args, jobs, seconds, 4 << 30).await?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (label, r) in [
        ("bytes weighed (32 MiB)", &weighed),
        ("count only (as before)", &counted),
    ] {
        println!(
            "  {label:<24} peak RSS {:.1} MiB (idle {:.1}; {:.0} % of the chart's {limit_mib:.0} MiB); at most {:.0} jobs and {:.1} MB of requests admitted; {} parts synthesized",
            mib(r.peak_kib),
            mib(r.idle_kib),
            100.0 * mib(r.peak_kib) / limit_mib,
            r.most_admitted,
            r.most_bytes / 1e6,
            r.parts
        );
    }
    println!(
        "  peak RSS weighed / count only: {:.2}×; parts synthesized weighed / count only: {:.2}×",
        weighed.peak_kib as f64 / counted.peak_kib.max(1) as f64,
        weighed.parts as f64 / counted.parts.max(1) as f64
    );
    if mib(weighed.peak_kib) > limit_mib {
        bail!("the weighed worker went past the chart's memory limit");
    }
    Ok(())
}

async fn fairness(args: &Args) -> anyhow::Result<()> {
    let base = if args.latency > 0.0 {
        args.latency
    } else {
        5.0
    };
    let mut config = sim_config(base, 0.0);
    config.rate_limit_per_minute = Some(args.limit);
    let sim = segmind_sim::spawn(config, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?;
    let worker = Worker::start(
        "fairness",
        &sim,
        &[
            (
                "TTS__SEGMIND__RATE_LIMIT_PER_MINUTE",
                args.limit.to_string(),
            ),
            ("TTS__SEGMIND__POLL_PRIOR_LATENCY", base.to_string()),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = narration(args.chars);
    worker.publish("long-first", &text).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let short_at = worker
        .publish(
            "short-after",
            "A short notice, published after the long job.",
        )
        .await?;
    println!(
        "fairness: {} calls a minute; a job of {} characters, then 5 s later a short one",
        args.limit, args.chars
    );
    let give_up = Instant::now() + Duration::from_secs(1800);
    loop {
        if Instant::now() > give_up {
            bail!("the short job did not finish within 30 minutes");
        }
        if let Some(e) = worker.poll_event().await? {
            if e.subject == "short-after" {
                let secs = short_at.elapsed().as_secs_f64();
                completed(&e)?;
                let (parts, stored, _) = worker.phase("long-first").await.unwrap_or((0, 0, false));
                println!(
                    "  the short job completed {secs:.0} s after it was published; the long job had {stored} of {parts} parts stored by then"
                );
                worker.stop().await;
                if secs > 180.0 {
                    bail!("the short job waited more than 3 minutes");
                }
                return Ok(());
            }
            println!("  unexpected: {} finished first", e.subject);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
