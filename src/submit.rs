//! `tts-worker submit`: publish one request, optionally wait for its event
//! and save the audio. What a backend developer uses to try the service.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sha2::{Digest, Sha256};

use crate::broker::{self, Publisher, Topology};
use crate::config::Settings;
use crate::storage::Storage;
use crate::wire::{self, EventData, RequestBody};

/// What to submit and how to wait.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The text to speak; style instructions go inline, and two-speaker
    /// transcripts name the speakers ("Speaker 1: …").
    #[arg(long)]
    pub text: String,
    /// First voice (default Kore).
    #[arg(long = "voice-1")]
    pub voice_1: Option<String>,
    /// Second voice, for two-speaker dialogue.
    #[arg(long = "voice-2")]
    pub voice_2: Option<String>,
    /// A style instruction put in front of the text ("Say cheerfully").
    #[arg(long)]
    pub style: Option<String>,
    /// Sampling temperature, 0 to 2 (default 0.4).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Job id (default: a new UUID).
    #[arg(long = "job-id")]
    pub job_id: Option<String>,
    /// Storage key override.
    #[arg(long = "output-key")]
    pub output_key: Option<String>,
    /// Delivered format: wav, mp3, ogg (Opus), flac, mulaw.
    #[arg(long)]
    pub format: Option<String>,
    /// Delivered sample rate, Hz.
    #[arg(long = "sample-rate")]
    pub sample_rate: Option<u32>,
    /// Bitrate for mp3 and ogg, kbit/s.
    #[arg(long = "bitrate")]
    pub bitrate_kbps: Option<u32>,
    /// Integrated loudness target, LUFS (e.g. -16).
    #[arg(long = "loudness", allow_hyphen_values = true)]
    pub loudness_lufs: Option<f64>,
    /// True-peak ceiling, dBTP (default -1 with --loudness).
    #[arg(long = "true-peak", allow_hyphen_values = true)]
    pub true_peak_db: Option<f64>,
    /// Caption files to write beside the audio: vtt, srt (repeatable).
    #[arg(long = "captions")]
    pub captions: Vec<String>,
    /// Wait for the job's terminal event and print it.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: save the audio to this file.
    #[arg(long, requires = "wait")]
    pub out: Option<PathBuf>,
    /// With --wait: also print the event as received (CloudEvents JSON).
    #[arg(long = "print-event", requires = "wait")]
    pub print_event: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// Publishes the request; with `--wait`, returns whether the job completed.
/// Cancels `job_id`: publishes `{"job_id": …}` to the control exchange
/// (`fleet.control_exchange`), confirmed. Every replica reads it from the
/// fleet stream.
pub async fn cancel(settings: &Settings, job_id: &str) -> anyhow::Result<()> {
    if settings.fleet.stream.is_none() {
        bail!("fleet.stream is \"\": cancellation needs the fleet stream");
    }
    let amqp = &settings.amqp;
    let connection = broker::connect(&amqp.url, amqp.connect_timeout, "tts-worker cancel")
        .await
        .context("connecting to the broker (amqp.url)")?;
    broker::declare(&connection, &Topology::from(settings))
        .await
        .context("declaring queues")?;
    let publisher =
        broker::Publisher::new(connection.create_channel().await?, amqp.publish_timeout)
            .await
            .context("enabling publisher confirms")?;
    let body = serde_json::to_vec(&serde_json::json!({ "job_id": job_id }))?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    publisher
        .publish(
            &settings.fleet.control_exchange,
            "",
            &body,
            properties,
            true,
        )
        .await
        .context("publishing the cancellation")?;
    println!(
        "cancelled job {job_id} (to {}); its replica ends it before its next submission",
        settings.fleet.control_exchange
    );
    let _ = connection.close(200, "cancel sent".into()).await;
    Ok(())
}

pub async fn run(settings: &Settings, args: SubmitArgs) -> anyhow::Result<bool> {
    let amqp = &settings.amqp;
    let connection = broker::connect(&amqp.url, amqp.connect_timeout, "tts-worker submit")
        .await
        .context("connecting to the broker (amqp.url)")?;
    let channel = connection.create_channel().await?;
    let topology = Topology::from(settings);
    broker::declare(&connection, &topology)
        .await
        .context("declaring queues")?;

    let job_id = args
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let body = serde_json::to_vec(
        &RequestBody {
            text: args.text.clone(),
            style: args.style.clone(),
            voice_1: args.voice_1.clone(),
            voice_2: args.voice_2.clone(),
            temperature: args.temperature,
            job_id: args.job_id.clone(),
            output_key: args.output_key.clone(),
            metadata: None,
            format: args.format.clone(),
            sample_rate: args.sample_rate,
            bitrate_kbps: args.bitrate_kbps,
            loudness_lufs: args.loudness_lufs,
            true_peak_db: args.true_peak_db,
            captions: (!args.captions.is_empty()).then(|| args.captions.clone()),
            ..RequestBody::default()
        }
        .versioned(),
    )?;
    // A trace of its own, so the job, its spans and its event can be found
    // by the id printed below.
    let traceparent = crate::telemetry::new_traceparent();
    let mut properties = broker::with_headers(
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(job_id.as_str().into()),
        &[(crate::wire::TRACEPARENT_HEADER, &traceparent)],
    );

    // The reply queue exists before the request is published, so the event
    // cannot be missed.
    let replies = if args.wait {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await?;
        properties = properties
            .with_reply_to(queue.name().clone())
            .with_correlation_id(job_id.as_str().into());
        Some(
            channel
                .basic_consume(
                    queue.name().clone(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        )
    } else {
        None
    };

    let publisher =
        Publisher::new(connection.create_channel().await?, amqp.publish_timeout).await?;
    publisher
        .publish("", &topology.requests_queue, &body, properties, true)
        .await
        .context("publishing the request")?;
    println!(
        "submitted job {job_id} to {} (traceparent {traceparent})",
        topology.requests_queue
    );

    let Some(mut replies) = replies else {
        return Ok(true);
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    let delivery = loop {
        tokio::select! {
            next = replies.next() => match next {
                Some(Ok(d)) => break d,
                Some(Err(e)) => return Err(e).context("waiting for the event"),
                None => bail!("the broker closed the reply consumer"),
            },
            _ = ticker.tick() => {
                if Instant::now() >= deadline {
                    bail!("no event for job {job_id} after {} s", args.timeout);
                }
                eprintln!("  … job {job_id} still running ({} s)", started.elapsed().as_secs());
            }
        }
    };
    delivery.acker.ack(BasicAckOptions::default()).await?;
    let event = wire::decode_event(&delivery.data).context("decoding the event")?;
    if args.print_event {
        let value: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    let secs = started.elapsed().as_secs_f64();
    let completed = match event.data {
        EventData::Completed(c) => {
            println!(
                "completed job {} in {secs:.1} s: {} ({} bytes, {}, {} s of audio, sha256 {})",
                c.job_id,
                c.audio.uri,
                c.audio.size_bytes,
                c.audio.content_type,
                c.audio
                    .duration_seconds
                    .map_or("?".into(), |d| format!("{d:.1}")),
                &c.audio.sha256[..12.min(c.audio.sha256.len())],
            );
            if let (Some(format), Some(rate)) = (&c.audio.format, c.audio.sample_rate) {
                println!(
                    "  {format} at {rate} Hz{}{}",
                    c.audio
                        .bitrate_kbps
                        .map_or(String::new(), |b| format!(", {b} kbit/s")),
                    c.audio.loudness_lufs.map_or(String::new(), |l| format!(
                        ", {l:.1} LUFS, true peak {:.1} dBTP",
                        c.audio.true_peak_db.unwrap_or(f64::NAN)
                    )),
                );
            }
            if c.parts > 1 {
                println!(
                    "  {} parts, Segmind requests {}",
                    c.parts,
                    c.segmind.request_ids.join(", ")
                );
            }
            if let Some(path) = &args.out {
                let storage = Storage::new(&settings.s3).await;
                save_audio(&storage, &c.audio.key, &c.audio.sha256, path).await?;
                println!("saved {}", path.display());
                if let Some(marks) = &c.audio.marks_key {
                    // The timing marks beside the audio: `{out}.marks.json`.
                    let mut marks_path = path.clone().into_os_string();
                    marks_path.push(".marks.json");
                    save_object(&storage, marks, &PathBuf::from(marks_path)).await?;
                }
                // Caption files beside the audio, named after `--out`.
                for caption in &c.audio.captions {
                    save_object(
                        &storage,
                        &caption.key,
                        &path.with_extension(&caption.format),
                    )
                    .await?;
                }
            }
            true
        }
        // Progress goes to the events exchange only, never to reply_to.
        EventData::Progress(p) => bail!("unexpected progress event of job {}", p.job_id),
        EventData::Failed(f) => {
            println!(
                "failed job {} in {secs:.1} s: {} — {} (retryable: {})",
                f.job_id, f.error.code, f.error.message, f.error.retryable
            );
            false
        }
    };
    std::io::stdout().flush()?;
    let _ = connection.close(200, "done".into()).await;
    Ok(completed)
}

/// Saves an object beside the audio and says so.
async fn save_object(storage: &Storage, key: &str, path: &PathBuf) -> anyhow::Result<()> {
    let object = storage.get(key).await?;
    std::fs::write(path, &object.bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("saved {}", path.display());
    Ok(())
}

async fn save_audio(
    storage: &Storage,
    key: &str,
    sha256: &str,
    path: &PathBuf,
) -> anyhow::Result<()> {
    let object = storage.get(key).await?;
    let actual = hex::encode(Sha256::digest(&object.bytes));
    if actual != sha256 {
        bail!("downloaded audio does not match its checksum ({actual} ≠ {sha256})");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, &object.bytes).with_context(|| format!("writing {}", path.display()))
}
