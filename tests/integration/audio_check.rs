//! Independent checks of delivered audio and captions, with Debian's tools
//! (ffprobe, ffmpeg's ebur128 filter, flac, opusinfo, sox) and PyPI's
//! caption parsers (webvtt-py, srt): none of them shares code with the
//! worker. `scripts/tools.sh` installs them; a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A temporary file holding `bytes`, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(bytes: &[u8], extension: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("tts-{}.{extension}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, bytes).unwrap();
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs a checker; a checker that is not installed fails the test.
pub fn run(program: &str, args: &[&str], file: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (scripts/tools.sh): {e}"))
}

fn ok(program: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{program} refused the file: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ffprobe's view of the first stream and the container.
pub struct Probe {
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u64,
    pub duration: f64,
    pub format_name: String,
}

pub fn ffprobe(file: &Path) -> Probe {
    let ffprobe = std::env::var("TTS_FFPROBE").unwrap_or_else(|_| "ffprobe".into());
    let out = run(
        &ffprobe,
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration,format_name:stream=codec_name,sample_rate,channels",
            "-of",
            "json",
        ],
        file,
    );
    ok("ffprobe", &out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Probe {
        codec: v["streams"][0]["codec_name"]
            .as_str()
            .unwrap_or_default()
            .into(),
        sample_rate: v["streams"][0]["sample_rate"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        channels: v["streams"][0]["channels"].as_u64().unwrap_or(0),
        duration: v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(f64::NAN),
        format_name: v["format"]["format_name"]
            .as_str()
            .unwrap_or_default()
            .into(),
    }
}

/// Integrated loudness (LUFS) and true peak (dBTP) by ffmpeg's ebur128
/// filter.
pub fn ebur128(file: &Path) -> (f64, f64) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(file)
        .args(["-af", "ebur128=peak=true", "-f", "null", "-"])
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg must be installed (scripts/tools.sh): {e}"));
    ok("ffmpeg", &out);
    let log = String::from_utf8_lossy(&out.stderr);
    let summary = &log[log.rfind("Summary:").expect("an ebur128 summary")..];
    let value_after = |label: &str| -> f64 {
        let at = summary
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {summary}"));
        summary[at + label.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a number after {label} in {summary}"))
    };
    (value_after("I:"), value_after("Peak:"))
}

/// The file decoded by ffmpeg to 16-bit mono PCM at `rate`.
pub fn decode(file: &Path, rate: u32) -> Vec<i16> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(file)
        .args(["-f", "s16le", "-ac", "1", "-ar", &rate.to_string(), "-"])
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg must be installed (scripts/tools.sh): {e}"));
    ok("ffmpeg", &out);
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// `flac -t`: every frame of the FLAC stream decodes (CRCs checked; the
/// MD5 of a streamed file is unset, written before the audio is known).
pub fn flac_test(file: &Path) {
    let out = run("flac", &["-t", "-s"], file);
    ok("flac -t", &out);
}

/// `opusinfo`: the Ogg Opus stream is valid; returns its report.
pub fn opusinfo(file: &Path) -> String {
    let out = run("opusinfo", &[], file);
    ok("opusinfo", &out);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !report.to_lowercase().contains("warning") && !report.contains("error"),
        "opusinfo: {report}"
    );
    report
}

/// `sox --i`: sample rate and encoding as SoX reads a WAV file.
pub fn sox_info(file: &Path) -> String {
    let out = run("sox", &["--i"], file);
    ok("sox --i", &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A caption file's cues as (start, end) seconds, parsed by PyPI's
/// `webvtt-py` (vtt) or `srt` (srt).
pub fn parse_captions(file: &Path, format: &str) -> Vec<(f64, f64, String)> {
    let python = std::env::var("TTS_TOOLS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = match format {
        "vtt" => {
            "import json,sys,webvtt\n\
             def s(t):\n    h, m, x = t.split(':')\n    return int(h) * 3600 + int(m) * 60 + float(x)\n\
             print(json.dumps([[s(c.start), s(c.end), c.text] for c in webvtt.read(sys.argv[1])]))"
        }
        "srt" => {
            "import json,sys,srt\n\
             print(json.dumps([[s.start.total_seconds(), s.end.total_seconds(), s.content] \
             for s in srt.parse(open(sys.argv[1], encoding='utf-8').read())]))"
        }
        other => panic!("no parser for {other}"),
    };
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{python} must be installed (scripts/tools.sh): {e}"));
    ok(&format!("{python} ({format} parser)"), &out);
    let cues: Vec<(f64, f64, String)> =
        serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    cues
}
