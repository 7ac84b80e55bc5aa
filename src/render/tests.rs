//! Renders synthetic programmes in every format and checks them with
//! independent decoders installed on the machine (ffmpeg/ffprobe, flac,
//! opusinfo, sox): what they decode, how long, how loud.

use std::f64::consts::PI;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::deliverable::{LoudnessTarget, SOURCE_RATE};

// ---------------------------------------------------------------------------
// Independent tools.

/// The path of an external checker; fails the test when it is missing.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run scripts/tools.sh (Debian packages ffmpeg, flac, \
                 opus-tools, sox)"
            )
        })
}

struct Run {
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs a tool; fails the test when it exits with an error.
fn run(name: &str, args: &[&str]) -> Run {
    let output = Command::new(tool(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{stderr}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    Run {
        stdout: output.stdout,
        stderr,
    }
}

/// A file in the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(bytes: &[u8], extension: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tts-render-{}-{}.{extension}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// ffprobe's view of the file's only stream.
struct Probe {
    codec: String,
    sample_rate: u32,
    channels: u64,
    duration: f64,
}

fn ffprobe(path: &str) -> Probe {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
            path,
        ],
    );
    assert!(
        out.stderr.trim().is_empty(),
        "ffprobe complains: {}",
        out.stderr
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let streams = json["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "one stream: {json}");
    let s = &streams[0];
    let number = |v: &serde_json::Value| -> f64 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_f64())
            .unwrap_or_else(|| panic!("not a number: {v}"))
    };
    Probe {
        codec: s["codec_name"].as_str().expect("codec_name").to_owned(),
        sample_rate: number(&s["sample_rate"]) as u32,
        channels: s["channels"].as_u64().expect("channels"),
        duration: number(&json["format"]["duration"]),
    }
}

/// The file decoded by ffmpeg: mono s16 at the stream's own rate.
fn ffmpeg_decode(path: &str) -> Vec<i16> {
    let out = run(
        "ffmpeg",
        &["-v", "error", "-i", path, "-f", "s16le", "-ac", "1", "-"],
    );
    assert!(
        out.stderr.trim().is_empty(),
        "ffmpeg complains: {}",
        out.stderr
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// ffmpeg's EBU R128 summary: integrated loudness (LUFS) and true peak (dBTP).
fn ffmpeg_loudness(path: &str) -> (f64, f64) {
    let out = run(
        "ffmpeg",
        &[
            "-hide_banner",
            "-nostats",
            "-i",
            path,
            "-af",
            "ebur128=peak=true",
            "-f",
            "null",
            "-",
        ],
    );
    let summary = out
        .stderr
        .rsplit("Summary:")
        .next()
        .expect("an ebur128 summary");
    let value = |key: &str| -> f64 {
        summary
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the summary:\n{summary}"))
    };
    (value("I:"), value("Peak:"))
}

// ---------------------------------------------------------------------------
// Programmes.

/// A deterministic pseudo-random sequence in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Speech-like: "syllables" of a harmonic voice (100–250 Hz fundamental,
/// harmonics to 4 kHz with a falling spectrum, a gliding pitch and a smooth
/// envelope) between pauses, at 24 kHz, peaking near `peak` of full scale.
fn speech_like(seconds: f64, peak: f64, seed: u64) -> Vec<i16> {
    let rate = f64::from(SOURCE_RATE);
    let n = (seconds * rate) as usize;
    let mut out = vec![0.0f64; n];
    let mut rng = Lcg(seed);
    let mut t = (0.1 * rate) as usize;
    while t < n {
        let len = ((0.08 + 0.2 * rng.next()) * rate) as usize;
        let f0 = 100.0 + 150.0 * rng.next();
        let glide = 0.8 + 0.4 * rng.next();
        let amp = 0.4 + 0.6 * rng.next();
        let mut phase = 0.0f64;
        for i in 0..len.min(n - t) {
            let x = i as f64 / len as f64;
            let f = f0 * (1.0 + (glide - 1.0) * x);
            phase += 2.0 * PI * f / rate;
            let envelope = (PI * x).sin().powi(2);
            let mut v = 0.0;
            let mut h = 1.0;
            while h * f < 4000.0 {
                v += (h * phase).sin() / h;
                h += 1.0;
            }
            out[t + i] = amp * envelope * v;
        }
        t += len + ((0.05 + 0.35 * rng.next()) * rate) as usize;
    }
    let max = out.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    out.iter()
        .map(|v| (v / max * peak * 32767.0).round() as i16)
        .collect()
}

/// Speech close to the microphone: plosives and sibilants a few ms long,
/// near full scale, at most syllable onsets, over a voice whose loudness is
/// about 20 dB under its true peak.
fn close_miked(seconds: f64) -> Vec<i16> {
    let mut pcm = speech_like(seconds, 0.35, 11);
    let rate = SOURCE_RATE as usize;
    let mut rng = Lcg(3);
    let mut at = rate / 5;
    while at + rate / 100 < pcm.len() {
        let len = rate * (2 + (4.0 * rng.next()) as usize) / 1000;
        for i in 0..len {
            let decay = 1.0 - i as f64 / len as f64;
            let v = 0.6 * 32767.0 * decay * (2.0 * rng.next() - 1.0);
            pcm[at + i] = v as i16;
        }
        at += ((0.15 + 0.25 * rng.next()) * rate as f64) as usize;
    }
    pcm
}

/// Quiet speech with a few near-full-scale bursts: its true peak, not its
/// loudness, limits the gain.
fn peaky(seconds: f64) -> Vec<i16> {
    let mut pcm = speech_like(seconds, 0.05, 7);
    let rate = SOURCE_RATE as usize;
    for k in 1..4 {
        let at = k * rate + rate / 3;
        for i in 0..rate / 100 {
            let v = 0.9 * 32767.0 * (2.0 * PI * 1000.0 * i as f64 / rate as f64).sin();
            pcm[at + i] = v as i16;
        }
    }
    pcm
}

/// Odd chunk sizes, cycled.
const CHUNKS: [usize; 7] = [1, 7, 333, 4097, 10_000, 50, 2];

struct Rendered {
    bytes: Vec<u8>,
    delivered: Delivered,
    spec: RenderSpec,
}

fn spec(format: Format, rate: u32, gain_db: f64, frames: usize) -> RenderSpec {
    RenderSpec {
        format,
        input_rate: SOURCE_RATE,
        output_rate: rate,
        bitrate_kbps: None,
        gain_db,
        ceiling_db: None,
        input_frames: frames as u64,
    }
}

/// Renders `pcm` pushed in odd chunks, draining the output buffer after
/// every call as the uploader does.
fn render(spec: RenderSpec, pcm: &[i16]) -> Rendered {
    let mut render = Render::new(spec.clone()).expect("render");
    let mut file = Vec::new();
    let mut out = Vec::new();
    let mut rest = pcm;
    let mut i = 0;
    while !rest.is_empty() {
        let n = CHUNKS[i % CHUNKS.len()].min(rest.len());
        render.push(&rest[..n], &mut out).expect("push");
        file.append(&mut out);
        rest = &rest[n..];
        i += 1;
    }
    let streamed = file.len();
    let delivered = render.finish(&mut out).expect("finish");
    file.append(&mut out);
    if pcm.len() > 3 * SOURCE_RATE as usize {
        assert!(
            streamed > file.len() / 2,
            "{:?}: only {streamed} of {} bytes came before finish",
            spec.format,
            file.len()
        );
    }
    Rendered {
        bytes: file,
        delivered,
        spec,
    }
}

// ---------------------------------------------------------------------------
// Every format, checked by independent tools.

/// Everything the tools can say about one rendered file.
fn check(format: Format, rate: u32, gain_db: f64) -> Vec<i16> {
    let pcm = speech_like(6.0, 0.5, 1);
    let r = render(spec(format, rate, gain_db, pcm.len()), &pcm);
    let file = TempFile::new(&r.bytes, format.extension());
    let frames = r.spec.output_frames();
    let seconds = frames as f64 / f64::from(rate);
    assert_eq!(r.delivered.frames, frames);
    assert_eq!(r.delivered.sample_rate, rate);
    assert_eq!(r.delivered.channels, 1);
    assert!((r.delivered.duration_seconds - 6.0).abs() < 1e-3);
    assert_eq!(r.delivered.clipped_samples, 0);

    let probe = ffprobe(file.path());
    let (codec, probe_rate) = match format {
        Format::Wav => ("pcm_s16le", rate),
        Format::Mulaw => ("pcm_mulaw", rate),
        Format::Mp3 => ("mp3", rate),
        Format::Ogg => ("opus", 48_000),
        Format::Flac => ("flac", rate),
    };
    assert_eq!(probe.codec, codec);
    assert_eq!(probe.sample_rate, probe_rate);
    assert_eq!(probe.channels, 1);
    // ffprobe reads an MP3's length from its Info frame: the frames it
    // announces, LAME's delay (1,105 with the decoder's) and padding (576 to
    // 1,727 samples) included, as for any LAME file; decoders trim them.
    let slack = if format == Format::Mp3 {
        (1_105.0 + 1_727.0) / f64::from(rate)
    } else {
        0.03
    };
    assert!(
        probe.duration >= seconds - 0.001 && probe.duration <= seconds + slack,
        "{format}@{rate}: ffprobe says {} s, programme {seconds} s",
        probe.duration
    );

    let decoded = ffmpeg_decode(file.path());
    match format {
        Format::Wav | Format::Mulaw | Format::Flac => {
            assert_eq!(
                decoded.len() as u64,
                frames,
                "{format}@{rate}: decoded length"
            )
        }
        Format::Ogg => assert_eq!(
            decoded.len() as u64,
            frames * u64::from(48_000 / rate),
            "{format}@{rate}: decoded length at 48 kHz after pre-skip and end trimming"
        ),
        // Gapless: the Info frame's delay and padding trimmed, exactly.
        Format::Mp3 => assert_eq!(
            decoded.len() as u64,
            frames,
            "{format}@{rate}: decoded length (gapless)"
        ),
    }

    match format {
        Format::Wav | Format::Mulaw => {
            let info = run("sox", &["--i", file.path()]);
            let text = String::from_utf8_lossy(&info.stdout);
            assert!(
                info.stderr.trim().is_empty(),
                "sox complains: {}",
                info.stderr
            );
            assert!(text.contains(&format!("Sample Rate    : {rate}")), "{text}");
            assert!(text.contains("Channels       : 1"), "{text}");
            assert!(text.contains(&format!("= {frames} samples")), "{text}");
            let encoding = if format == Format::Wav {
                "16-bit Signed Integer PCM"
            } else {
                "u-law"
            };
            assert!(text.contains(encoding), "{text}");
        }
        Format::Flac => flac_test(file.path()),
        Format::Ogg => {
            let info = run("opusinfo", &[file.path()]);
            let text = format!("{}{}", String::from_utf8_lossy(&info.stdout), info.stderr);
            assert!(
                !text.contains("WARNING") && !text.contains("ERROR"),
                "opusinfo: {text}"
            );
            assert!(
                text.contains(&format!("Original sample rate: {rate} Hz")),
                "{text}"
            );
            assert!(text.contains("Channels: 1"), "{text}");
            assert!(text.contains("Playback length: 0m:06.000s"), "{text}");
        }
        Format::Mp3 => {}
    }

    // Loudness and true peak: ours (on the decoded delivery) against ffmpeg's.
    let (lufs, peak) = ffmpeg_loudness(file.path());
    let ours = r.delivered.loudness_lufs.expect("loudness");
    let our_peak = r.delivered.true_peak_db.expect("true peak");
    assert!(
        (ours - lufs).abs() <= 0.5,
        "{format}@{rate}: loudness {ours} LUFS, ffmpeg {lufs}"
    );
    assert!(
        (our_peak - peak).abs() <= 0.5,
        "{format}@{rate}: true peak {our_peak} dBTP, ffmpeg {peak}"
    );
    decoded
}

/// `flac -t` passes: the only complaint allowed is the unset MD5.
fn flac_test(path: &str) {
    let out = run("flac", &["-t", path]);
    let complaints: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("WARNING") || l.contains("ERROR"))
        .filter(|l| !l.contains("MD5"))
        .collect();
    assert!(complaints.is_empty(), "flac -t: {}", out.stderr);
    assert!(
        out.stderr.trim_end().ends_with("ok"),
        "flac -t: {}",
        out.stderr
    );
}

#[test]
fn wav_is_exact() {
    // At the source rate without gain, the samples go through untouched.
    let pcm = speech_like(6.0, 0.5, 1);
    let decoded = check(Format::Wav, SOURCE_RATE, 0.0);
    assert_eq!(decoded, pcm);
    check(Format::Wav, 16_000, -3.0);
    check(Format::Wav, 48_000, 2.0);
}

#[test]
fn mulaw_decodes_to_the_table() {
    let decoded = check(Format::Mulaw, 8_000, -2.0);
    // What ffmpeg decodes is our table's expansion of the PCM we would have
    // written at the same rate and gain.
    let pcm = speech_like(6.0, 0.5, 1);
    let r = render(spec(Format::Wav, 8_000, -2.0, pcm.len()), &pcm);
    let linear: Vec<i16> = r.bytes[44..]
        .chunks_exact(2)
        .map(|b| wav::mulaw_decode(wav::mulaw_encode(i16::from_le_bytes([b[0], b[1]]))))
        .collect();
    assert_eq!(decoded, linear);
}

#[test]
fn mp3_decodes() {
    check(Format::Mp3, 16_000, -1.0);
    check(Format::Mp3, 48_000, 0.0);
    check(Format::Mp3, 8_000, 0.0);
}

#[test]
fn ogg_opus_decodes() {
    check(Format::Ogg, 16_000, -1.0);
    check(Format::Ogg, 48_000, 0.0);
    check(Format::Ogg, 8_000, 0.0);
}

#[test]
fn flac_decodes() {
    check(Format::Flac, 16_000, 0.0);
    let decoded = check(Format::Flac, SOURCE_RATE, 0.0);
    assert_eq!(decoded, speech_like(6.0, 0.5, 1), "lossless");
    check(Format::Flac, 44_100, -4.0);
}

#[test]
fn flac_with_a_short_last_block() {
    // 2 full blocks and 5 samples; then a stream shorter than one block.
    for frames in [2 * flac::BLOCK_SIZE + 5, 1000] {
        let pcm: Vec<i16> = speech_like(1.0, 0.5, 3).into_iter().take(frames).collect();
        let r = render(spec(Format::Flac, SOURCE_RATE, 0.0, frames), &pcm);
        let file = TempFile::new(&r.bytes, "flac");
        flac_test(file.path());
        assert_eq!(ffmpeg_decode(file.path()), pcm);
        // STREAMINFO: minimum = maximum block size; total samples.
        let info = &r.bytes[8..42];
        assert_eq!(&info[0..2], &info[2..4]);
        let packed = u64::from_be_bytes(info[10..18].try_into().expect("8 bytes"));
        assert_eq!(packed & ((1 << 36) - 1), frames as u64);
    }
}

#[test]
fn wav_files_are_as_long_as_their_headers_say() {
    for (format, rate, frames) in [
        (Format::Wav, 16_000, 24_001),
        (Format::Mulaw, 8_000, 24_001),
        (Format::Mulaw, 8_000, 24_003),
    ] {
        let pcm = vec![100i16; frames];
        let r = render(spec(format, rate, 0.0, frames), &pcm);
        let riff = u32::from_le_bytes(r.bytes[4..8].try_into().expect("4 bytes"));
        assert_eq!(riff as usize + 8, r.bytes.len(), "{format} {frames}");
    }
}

// ---------------------------------------------------------------------------
// Time alignment.

/// Where the biggest sample is.
fn argmax(samples: &[i16]) -> usize {
    samples
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| i32::from(**s).abs())
        .map(|(i, _)| i)
        .expect("samples")
}

/// A click at exactly 1.000 s.
fn click() -> Vec<i16> {
    let mut pcm = vec![0i16; 2 * SOURCE_RATE as usize];
    pcm[SOURCE_RATE as usize] = 20_000;
    pcm
}

#[test]
fn an_onset_stays_at_its_time() {
    let pcm = click();
    for rate in [8_000, 16_000, 44_100, 48_000] {
        let r = render(spec(Format::Wav, rate, 0.0, pcm.len()), &pcm);
        let file = TempFile::new(&r.bytes, "wav");
        let at = argmax(&ffmpeg_decode(file.path()));
        let error_ms = (at as f64 / f64::from(rate) - 1.0) * 1000.0;
        assert!(
            error_ms.abs() <= 1.0,
            "{rate} Hz: the click is {error_ms} ms late"
        );
    }
}

#[test]
fn mp3_is_time_aligned() {
    // The click at 1 s is at 1 s in what ffmpeg decodes: the Info frame's
    // encoder delay is skipped.
    let pcm = click();
    for rate in [8_000, 16_000, 24_000, 44_100, 48_000] {
        let s = spec(Format::Mp3, rate, 0.0, pcm.len());
        let r = render(s.clone(), &pcm);
        let file = TempFile::new(&r.bytes, "mp3");
        let at = argmax(&ffmpeg_decode(file.path())) as i64;
        let expected = i64::from(rate);
        let error_ms = (at - expected) as f64 * 1000.0 / f64::from(rate);
        assert!(
            error_ms.abs() <= 0.5,
            "{rate} Hz: the click is at {at}, expected {expected} ({error_ms} ms)"
        );
    }
}

#[test]
fn opus_is_time_aligned() {
    let pcm = click();
    for rate in [16_000, 48_000] {
        let r = render(spec(Format::Ogg, rate, 0.0, pcm.len()), &pcm);
        let file = TempFile::new(&r.bytes, "ogg");
        // ffmpeg decodes at 48 kHz.
        let at = argmax(&ffmpeg_decode(file.path()));
        let error_ms = (at as f64 / 48_000.0 - 1.0) * 1000.0;
        assert!(
            error_ms.abs() <= 1.0,
            "{rate} Hz: the click is {error_ms} ms late"
        );
    }
}

// ---------------------------------------------------------------------------
// Loudness normalisation: meter, gain, render.

fn normalise(pcm: &[i16], format: Format, rate: u32, target: &LoudnessTarget) -> Rendered {
    let mut meter = Meter::new(SOURCE_RATE, rate).expect("meter");
    for chunk in pcm.chunks(5000) {
        meter.push(chunk).expect("meter push");
    }
    let measured = meter.finish().expect("measured");
    let ceiling = ceiling_db(target, format);
    let mut gain = gain_db(&measured, target, format);
    // As the pipeline does: measured again through the limiter, the gain
    // makes up for what it took.
    let mut tried = Vec::new();
    for _ in 0..MAKE_UP_PASSES {
        if !limits(&measured, gain, ceiling) {
            break;
        }
        let mut through = Meter::limited(SOURCE_RATE, rate, gain, ceiling).expect("meter");
        through.push(pcm).expect("meter push");
        tried.push((gain, through.finish().expect("measured")));
        match made_up_gain(&measured, &tried, target, format) {
            Some(next) => gain = next,
            None => break,
        }
    }
    let spec = RenderSpec {
        ceiling_db: Some(ceiling),
        ..spec(format, rate, gain, pcm.len())
    };
    render(spec, pcm)
}

#[test]
fn normalisation_reaches_the_target() {
    // Quiet speech (its peak-to-loudness ratio is 17.5 dB): the target is
    // reachable under the ceiling, even with the lossy margin.
    let target = LoudnessTarget {
        lufs: -20.0,
        true_peak_db: -1.0,
    };
    let pcm = speech_like(6.0, 0.1, 5);
    for (format, rate) in [
        (Format::Wav, 16_000),
        (Format::Mp3, 24_000),
        (Format::Ogg, 48_000),
        (Format::Flac, 44_100),
    ] {
        let r = normalise(&pcm, format, rate, &target);
        let file = TempFile::new(&r.bytes, format.extension());
        let (lufs, peak) = ffmpeg_loudness(file.path());
        assert!(
            (lufs - target.lufs).abs() <= 1.0,
            "{format}: {lufs} LUFS for a target of {}",
            target.lufs
        );
        assert!(
            peak <= target.true_peak_db + 0.3,
            "{format}: peak {peak} dBTP"
        );
    }
}

#[test]
fn close_miked_speech_meets_its_target_under_the_ceiling() {
    // What podcast platforms ask: −16 LUFS, −1 dBTP. Without the limiter
    // the gain stopped at the ceiling, several LU short of the target.
    let target = LoudnessTarget {
        lufs: -16.0,
        true_peak_db: -1.0,
    };
    let pcm = close_miked(20.0);
    let mut meter = Meter::new(SOURCE_RATE, SOURCE_RATE).expect("meter");
    meter.push(&pcm).expect("meter push");
    let source = meter.finish().expect("measured");
    let (Some(lufs), Some(peak)) = (source.integrated_lufs, source.true_peak_db) else {
        panic!("the source measures");
    };
    println!("source: {lufs:.1} LUFS, {peak:.1} dBTP");
    assert!(
        peak - lufs > 17.0,
        "a peaky source: {peak} dBTP at {lufs} LUFS"
    );
    for (format, rate) in [
        (Format::Wav, 24_000),
        (Format::Mp3, 44_100),
        (Format::Ogg, 48_000),
        (Format::Flac, 16_000),
    ] {
        let r = normalise(&pcm, format, rate, &target);
        let file = TempFile::new(&r.bytes, format.extension());
        let (lufs, peak) = ffmpeg_loudness(file.path());
        println!(
            "{format} at {rate} Hz: {lufs} LUFS, {peak} dBTP (ffmpeg); {:?} LUFS, {:?} dBTP \
             reported; {} samples limited",
            r.delivered.loudness_lufs, r.delivered.true_peak_db, r.delivered.limited_samples
        );
        assert!(
            (lufs - target.lufs).abs() <= 1.0,
            "{format}: {lufs} LUFS for a target of {}",
            target.lufs
        );
        assert!(
            peak <= target.true_peak_db,
            "{format}: true peak {peak} dBTP"
        );
        assert!(r.delivered.limited_samples > 0);
        assert_eq!(r.delivered.clipped_samples, 0);
        // The event's figures are what an independent meter reads.
        let reported = r.delivered.loudness_lufs.expect("measured");
        assert!(
            (reported - lufs).abs() <= 0.5,
            "{format}: reported {reported}"
        );
        let reported_peak = r.delivered.true_peak_db.expect("measured");
        assert!(
            (reported_peak - peak).abs() <= 0.3,
            "{format}: reported {reported_peak} dBTP, ffmpeg reads {peak}"
        );
    }
}

#[test]
fn stray_clicks_are_limited_only_so_far() {
    let target = LoudnessTarget {
        lufs: -16.0,
        true_peak_db: -2.0,
    };
    let pcm = peaky(6.0);
    for (format, rate) in [
        (Format::Wav, 24_000),
        (Format::Mp3, 16_000),
        (Format::Ogg, 16_000),
    ] {
        let r = normalise(&pcm, format, rate, &target);
        let file = TempFile::new(&r.bytes, format.extension());
        let (lufs, peak) = ffmpeg_loudness(file.path());
        assert!(
            peak <= target.true_peak_db + 0.3,
            "{format}: peak {peak} dBTP"
        );
        assert!(
            lufs < target.lufs - 3.0,
            "{format}: {lufs} LUFS, under target"
        );
        assert_eq!(r.delivered.clipped_samples, 0);
    }
}

// ---------------------------------------------------------------------------
// Contract.

#[test]
fn lengths_are_known_up_front() {
    let s = spec(Format::Wav, 16_000, 0.0, 24_001);
    assert_eq!(s.output_frames(), 16_001); // 16000.67 rounds up
    let s = spec(Format::Mulaw, 8_000, 0.0, 24_001);
    assert_eq!(s.output_frames(), 8_000); // 8000.33 rounds down
}

#[test]
fn the_announced_length_is_enforced() {
    let mut r = Render::new(spec(Format::Wav, 16_000, 0.0, 10)).expect("render");
    let mut out = Vec::new();
    assert!(matches!(
        r.push(&[0; 11], &mut out),
        Err(RenderError::TooMuchInput { announced: 10 })
    ));
    r.push(&[0; 9], &mut out).expect("push");
    assert!(matches!(
        r.finish(&mut out),
        Err(RenderError::ShortInput {
            got: 9,
            announced: 10
        })
    ));
    assert!(Render::new(spec(Format::Mulaw, 16_000, 0.0, 10)).is_err());
    let mut bad = spec(Format::Mp3, 48_000, 0.0, 10);
    bad.bitrate_kbps = Some(16);
    assert!(Render::new(bad).is_err());
}

#[test]
fn empty_and_silent_programmes_render() {
    for format in Format::ALL {
        let rate = format.default_rate();
        let r = render(spec(format, rate, 0.0, 0), &[]);
        assert_eq!(r.delivered.frames, 0);
        assert_eq!(r.delivered.loudness_lufs, None);
        let silence = vec![0i16; 12_000];
        let r = render(spec(format, rate, 6.0, silence.len()), &silence);
        assert_eq!(r.delivered.loudness_lufs, None, "{format}");
    }
}

#[test]
fn renders_can_move_to_a_blocking_thread() {
    fn send<T: Send + 'static>() {}
    send::<Render>();
    send::<Meter>();
    send::<RenderError>();
}
