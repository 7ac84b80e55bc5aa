//! The example producers integrators copy (`examples/python/producer.py`,
//! `examples/node/producer.mjs`), run as they would run them against a real
//! worker: each publishes a version 2 request with a `traceparent` and a
//! private reply queue, validates the event it gets back against
//! `contract/schemas/`, downloads the audio and captions from Garage and
//! checks them. The test then checks what the example says it did: the
//! files decode, the worker's event is in the example's trace, the
//! simulator was paid once. A missing interpreter or package fails the
//! test (never skips it): `scripts/tools.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::audio_check;
use crate::helpers::{TestApp, env_value, spawn_app, stack_env};

/// How long an example may run, start-up included (its `--timeout` bounds
/// the wait for the event alone).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// One example producer and the deliverable it asks for.
struct Example {
    name: &'static str,
    /// The interpreter: the first of these variables that is set (by
    /// `scripts/tools.sh`'s env file), else `fallback` on the PATH.
    interpreter_vars: &'static [&'static str],
    fallback: &'static str,
    /// Arguments that fail unless the example's packages are installed,
    /// run from the example's directory.
    probe: &'static [&'static str],
    /// The script, relative to the repository.
    script: &'static str,
    /// `--format`, and what ffprobe calls the delivered codec and container.
    format: &'static str,
    codec: &'static str,
    container: &'static str,
}

const PYTHON: Example = Example {
    name: "Python",
    interpreter_vars: &["TTS_EXAMPLES_PYTHON", "TTS_TOOLS_PYTHON"],
    fallback: "python3",
    probe: &["-c", "import pika, jsonschema, boto3"],
    script: "examples/python/producer.py",
    format: "mp3",
    codec: "mp3",
    container: "mp3",
};

const NODE: Example = Example {
    name: "Node",
    interpreter_vars: &["TTS_NODE"],
    fallback: "node",
    probe: &[
        "-e",
        "for (const m of ['amqplib', 'ajv', 'ajv-formats', '@aws-sdk/client-s3']) require.resolve(m)",
    ],
    script: "examples/node/producer.mjs",
    format: "ogg",
    codec: "opus",
    container: "ogg",
};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Example {
    fn interpreter(&self) -> String {
        self.interpreter_vars
            .iter()
            .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| self.fallback.to_owned())
    }

    fn dir(&self) -> PathBuf {
        let script = repo_root().join(self.script);
        script
            .parent()
            .expect("the script is in a directory")
            .to_path_buf()
    }

    /// Fails the test when the interpreter or the example's packages are
    /// missing, saying how to install them.
    async fn require_installed(&self) {
        let interpreter = self.interpreter();
        let install = format!(
            "the {} example needs {interpreter} and its packages: run scripts/tools.sh \
             (it installs them and writes the env file that sets {})",
            self.name,
            self.interpreter_vars.join(" / ")
        );
        let out = tokio::process::Command::new(interpreter)
            .args(self.probe)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("{install}: {e}"));
        assert!(
            out.status.success(),
            "{install}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the example against `app`'s worker; returns its output.
    async fn run(&self, app: &TestApp, job_id: &str, out_dir: &Path) -> Output {
        let env = stack_env();
        let text = format!(
            "Hello from the {} example. Every byte of this audio is checked.",
            self.name
        );
        let mut command = tokio::process::Command::new(self.interpreter());
        command
            .arg(repo_root().join(self.script))
            .args(["--text", text.as_str()])
            .args(["--format", self.format, "--captions", "vtt"])
            .args(["--job-id", job_id, "--timeout", "120"])
            .arg("--out-dir")
            .arg(out_dir)
            .arg("--schemas")
            .arg(repo_root().join("contract/schemas"))
            .env("AMQP_URL", app.settings.amqp.url.expose_secret())
            .env("TTS_REQUESTS_QUEUE", app.requests_queue())
            .env("S3_ENDPOINT", env_value(&env, "TTS__S3__ENDPOINT"))
            .env("AWS_REGION", env_value(&env, "TTS__S3__REGION"))
            .env("AWS_ACCESS_KEY_ID", env_value(&env, "AWS_ACCESS_KEY_ID"))
            .env(
                "AWS_SECRET_ACCESS_KEY",
                env_value(&env, "AWS_SECRET_ACCESS_KEY"),
            )
            .env_remove("TTS_SCHEMAS_DIR")
            // The AWS SDK's notice that its 2027 releases need Node 22.
            .env("AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(RUN_LIMIT, command.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => panic!(
                "the {} example did not start ({}): {e}; run scripts/tools.sh",
                self.name,
                self.interpreter()
            ),
            Err(_) => panic!(
                "the {} example did not finish within {RUN_LIMIT:?}",
                self.name
            ),
        }
    }
}

/// A directory for the example's files, removed when dropped.
struct OutDir(PathBuf);

impl OutDir {
    fn new() -> OutDir {
        let path =
            std::env::temp_dir().join(format!("tts-example-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        OutDir(path)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    let is_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = version == "00"
        && parts.next().is_none()
        && is_hex(trace, 32)
        && is_hex(span, 16)
        && is_hex(flags, 2);
    valid.then_some(trace)
}

/// The file a summary entry names, read.
fn read_summary_file(entry: &Value, what: &str) -> (PathBuf, Vec<u8>) {
    let path = PathBuf::from(
        entry["path"]
            .as_str()
            .unwrap_or_else(|| panic!("the summary names no {what} file: {entry}")),
    );
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{what} file {}: {e}", path.display()));
    assert_eq!(
        entry["bytes"].as_u64(),
        Some(bytes.len() as u64),
        "{what}: the summary's byte count"
    );
    (path, bytes)
}

async fn check_example(example: &Example) {
    example.require_installed().await;
    let app = spawn_app().await;
    let out_dir = OutDir::new();
    let job_id = format!(
        "example-{}-{}",
        example.name.to_lowercase(),
        uuid::Uuid::new_v4().simple()
    );

    let out = example.run(&app, &job_id, &out_dir.0).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {} example exited with {}:\n{stderr}\n{stdout}",
        example.name,
        out.status
    );
    let summary: Value = serde_json::from_str(stdout.lines().next_back().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the example's summary is not JSON ({e}):\n{stdout}"));
    assert_eq!(summary["job_id"], job_id.as_str(), "{summary}");
    assert_eq!(summary["type"], "tts.job.completed", "{summary}");

    // The worker's own record, on the durable events queue: the same event
    // the example got as its reply, in the trace the example started.
    let received = app.next_event().await;
    let data = received.completed();
    assert_eq!(data.job_id, job_id);
    assert_eq!(summary["event_id"], received.event.id.as_str(), "{summary}");
    let sent = summary["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the summary has no traceparent: {summary}"));
    let sent_trace = trace_id(sent).unwrap_or_else(|| panic!("the example sent {sent:?}"));
    assert_eq!(
        received.event.traceparent.as_deref().and_then(trace_id),
        Some(sent_trace),
        "the event's traceparent is not in the example's trace"
    );
    assert_eq!(
        tts_worker::testing::broker::header_str(&received.properties, "traceparent")
            .and_then(trace_id),
        Some(sent_trace),
        "the event's traceparent header is not in the example's trace"
    );
    // Synthesized now, by the simulator: not answered from storage.
    assert!(!data.served_from_storage);
    assert_eq!(app.sim.stats().submits_accepted, 1, "paid once");

    // The audio the example downloaded: the stored object, byte for byte,
    // in the format asked for, decoded by ffprobe.
    let audio = &data.audio;
    assert_eq!(audio.format.as_deref(), Some(example.format));
    let (path, bytes) = read_summary_file(&summary["audio"], "audio");
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        audio.key.rsplit('/').next(),
        "the audio is saved under its key's name"
    );
    assert_eq!(bytes.len() as u64, audio.size_bytes);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), audio.sha256);
    let probe = audio_check::ffprobe(&path);
    assert_eq!(probe.codec, example.codec, "{}", path.display());
    assert_eq!(probe.format_name, example.container, "{}", path.display());
    assert_eq!(probe.channels, 1);
    assert!(
        probe.duration > 0.5,
        "{}: {} s of audio",
        path.display(),
        probe.duration
    );

    // The captions it downloaded beside the audio parse as WebVTT.
    assert_eq!(audio.captions.len(), 1, "{:?}", audio.captions);
    assert_eq!(audio.captions[0].format, "vtt");
    let captions = summary["captions"]
        .as_array()
        .unwrap_or_else(|| panic!("the summary lists no captions: {summary}"));
    assert_eq!(captions.len(), 1, "{summary}");
    assert_eq!(captions[0]["format"], "vtt", "{summary}");
    let (vtt, _) = read_summary_file(&captions[0], "captions");
    assert_eq!(
        vtt.file_name().and_then(|n| n.to_str()),
        audio.captions[0].key.rsplit('/').next()
    );
    let cues = audio_check::parse_captions(&vtt, "vtt");
    assert!(!cues.is_empty(), "{}: no cues", vtt.display());

    app.stop().await;
}

#[tokio::test]
async fn the_python_example_gets_a_checked_mp3_and_captions_from_the_worker() {
    check_example(&PYTHON).await;
}

#[tokio::test]
async fn the_node_example_gets_a_checked_ogg_and_captions_from_the_worker() {
    check_example(&NODE).await;
}
