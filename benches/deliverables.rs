//! Deliverables benchmark: what rendering costs, per format, on one core,
//! beside ffmpeg doing the same conversion from the same PCM.
//!
//! ```text
//! cargo bench --bench deliverables -- [speed] [--minutes 30]
//! ```
//!
//! For every format (at a typical rate, with a loudness gain) it renders
//! `--minutes` of simulated speech (24 kHz mono, the simulator's tone
//! speech) with `render::Render` on this thread, then has Debian's ffmpeg
//! (`-threads 1`) convert the same PCM to the same format, rate and
//! bitrate; it prints both as multiples of real time and their ratio. The
//! loudness pass (`render::Meter`) is timed alike. Memory: the heap's peak
//! while rendering 5 minutes and while rendering `--minutes` (a counting
//! allocator), which must not grow with the audio's length.
//!
//! The long job's peak RSS as a whole (reading parts back from S3,
//! rendering, uploading) is `cargo bench --bench long_text -- memory
//! --format mp3 --lufs -16`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/heap.rs"]
mod heap;

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use tts_worker::testing::deliverable::{Format, LoudnessTarget};
use tts_worker::testing::render::{self, Meter, Render, RenderSpec};

const SOURCE_RATE: u32 = 24_000;

/// CPU time of this thread, in seconds (what one core spends, whatever
/// else the machine runs).
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// One minute of the simulator's tone speech, looped to any length.
fn minute_of_speech() -> anyhow::Result<Vec<i16>> {
    let wav = segmind_sim::speech::render_seconds(60.0, false);
    let (rate, data) = segmind_sim::wav::pcm_of(&wav).context("the simulator's WAV")?;
    if rate != SOURCE_RATE {
        bail!("the simulator speaks at {rate} Hz");
    }
    Ok(data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

struct Case {
    format: Format,
    rate: u32,
    bitrate: Option<u32>,
    /// ffmpeg's arguments for the same output.
    ffmpeg: &'static [&'static str],
    extension: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            format: Format::Wav,
            rate: 48_000,
            bitrate: None,
            ffmpeg: &["-c:a", "pcm_s16le"],
            extension: "wav",
        },
        Case {
            format: Format::Mp3,
            rate: 44_100,
            bitrate: Some(64),
            ffmpeg: &["-c:a", "libmp3lame", "-b:a", "64k"],
            extension: "mp3",
        },
        Case {
            format: Format::Ogg,
            rate: 48_000,
            bitrate: Some(32),
            ffmpeg: &["-c:a", "libopus", "-b:a", "32k"],
            extension: "ogg",
        },
        Case {
            format: Format::Flac,
            rate: 48_000,
            bitrate: None,
            ffmpeg: &["-c:a", "flac"],
            extension: "flac",
        },
        Case {
            format: Format::Mulaw,
            rate: 8_000,
            bitrate: None,
            ffmpeg: &["-c:a", "pcm_mulaw"],
            extension: "wav",
        },
    ]
}

/// Renders `minutes` of speech; returns (seconds, bytes out, heap peak
/// above the start).
fn render_once(case: &Case, minute: &[i16], minutes: u64) -> anyhow::Result<(f64, u64, usize)> {
    let spec = RenderSpec {
        format: case.format,
        input_rate: SOURCE_RATE,
        output_rate: case.rate,
        bitrate_kbps: case.bitrate,
        gain_db: 3.0,
        // The limiter in the chain, as for every job with a loudness target.
        ceiling_db: Some(-2.0),
        input_frames: minute.len() as u64 * minutes,
    };
    let base = heap::start();
    let started = thread_cpu();
    let mut render = Render::new(spec)?;
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for _ in 0..minutes {
        for chunk in minute.chunks(SOURCE_RATE as usize) {
            render.push(chunk, &mut out)?;
            // What the pipeline does: the bytes leave for the upload.
            bytes += out.len() as u64;
            out.clear();
        }
    }
    render.finish(&mut out)?;
    bytes += out.len() as u64;
    let seconds = thread_cpu() - started;
    Ok((seconds, bytes, heap::peak_since(base)))
}

/// ffmpeg converting the same PCM on one thread; its CPU seconds (user +
/// system, as its `-benchmark` reports them).
fn ffmpeg_once(case: &Case, minute: &[i16], minutes: u64) -> anyhow::Result<f64> {
    let out = std::env::temp_dir().join(format!("tts-bench-ffmpeg.{}", case.extension));
    let mut child = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostats",
            "-v",
            "info",
            "-benchmark",
            "-y",
            "-threads",
            "1",
        ])
        .args(["-f", "s16le", "-ar", "24000", "-ac", "1", "-i", "-"])
        .args(["-af", "volume=3dB", "-ar", &case.rate.to_string()])
        .args(case.ffmpeg)
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("ffmpeg (scripts/tools.sh installs it)")?;
    let bytes: Vec<u8> = minute.iter().flat_map(|s| s.to_le_bytes()).collect();
    {
        let mut stdin = child.stdin.take().context("ffmpeg's stdin")?;
        for _ in 0..minutes {
            stdin.write_all(&bytes)?;
        }
    }
    let output = child.wait_with_output()?;
    let _ = std::fs::remove_file(&out);
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("ffmpeg failed for {}: {report}", case.extension);
    }
    let time = |label: &str| -> anyhow::Result<f64> {
        let at = report
            .find(label)
            .with_context(|| format!("{label} in ffmpeg's report: {report}"))?;
        let value: String = report[at + label.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        Ok(value.parse()?)
    };
    Ok(time("utime=")? + time("stime=")?)
}

fn main() -> anyhow::Result<()> {
    let cli = common::BenchArgs::from_env();
    let minutes = cli.num("--minutes", 30.0).max(6.0) as u64;
    let minute = minute_of_speech()?;
    let audio = (minutes * 60) as f64;
    println!(
        "deliverables: {minutes} minutes of speech (24 kHz mono), one core, ×real time (higher is faster)"
    );
    println!(
        "  {:<6} {:>6} {:>9} {:>10} {:>10} {:>9} {:>12} {:>12}",
        "format",
        "rate",
        "kbit/s",
        "worker ×rt",
        "ffmpeg ×rt",
        "vs ffmpeg",
        "heap 5 min",
        "heap long"
    );
    let mut slowest = f64::INFINITY;
    for case in cases() {
        // Once to warm up (the encoders' one-time tables), then short and
        // long: the heap's peak must not follow the length.
        render_once(&case, &minute, 1)?;
        let (_, _, heap_short) = render_once(&case, &minute, 5)?;
        let (secs, bytes, heap_long) = render_once(&case, &minute, minutes)?;
        let ff = ffmpeg_once(&case, &minute, minutes)?;
        let speed = audio / secs;
        slowest = slowest.min(speed);
        println!(
            "  {:<6} {:>6} {:>9} {:>10.0} {:>10.0} {:>8.2}× {:>9.2} MiB {:>9.2} MiB   ({:.1} MB out, {:.1} s of CPU an hour)",
            case.format.as_str(),
            case.rate,
            case.bitrate.map_or("-".into(), |b| b.to_string()),
            speed,
            audio / ff,
            ff / secs,
            heap_short as f64 / 1_048_576.0,
            heap_long as f64 / 1_048_576.0,
            bytes as f64 / 1e6,
            secs * 3600.0 / audio,
        );
    }
    // The loudness pass: the programme metered at the output rate.
    let started = thread_cpu();
    let mut meter = Meter::new(SOURCE_RATE, 48_000)?;
    for _ in 0..minutes {
        for chunk in minute.chunks(SOURCE_RATE as usize) {
            meter.push(chunk)?;
        }
    }
    let measured = meter.finish()?;
    let meter_speed = audio / (thread_cpu() - started);
    let gain = render::gain_db(
        &measured,
        &LoudnessTarget {
            lufs: -16.0,
            true_peak_db: -1.0,
        },
        Format::Mp3,
    );
    println!(
        "  loudness pass at 48 kHz: {meter_speed:.0}× real time ({:?} LUFS, {:?} dBTP; gain to −16 LUFS: {gain:+.1} dB)",
        measured.integrated_lufs, measured.true_peak_db
    );
    // The limiter alone, at 48 kHz, 12 dB over the ceiling (every peak
    // limited).
    let loud: Vec<f32> = minute
        .iter()
        .flat_map(|&s| [f32::from(s) / 8192.0; 2])
        .collect();
    let started = thread_cpu();
    let mut limiter = render::Limiter::new(48_000, -1.0);
    let mut out = Vec::with_capacity(loud.len());
    for _ in 0..minutes {
        for chunk in loud.chunks(48_000) {
            limiter.push(chunk, &mut out);
            out.clear();
        }
    }
    limiter.finish(&mut out);
    let limiter_speed = audio / (thread_cpu() - started);
    println!(
        "  true-peak limiter at 48 kHz: {limiter_speed:.0}× real time ({:.0} % of samples limited)",
        100.0 * limiter.limited() as f64 / (loud.len() as f64 * minutes as f64)
    );
    println!(
        "  slowest format {slowest:.0}× real time (goal ≥ 100×): {}",
        if slowest >= 100.0 { "PASS" } else { "MISS" }
    );
    Ok(())
}
