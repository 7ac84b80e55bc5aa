//! The container image's contract, checked without Docker. The runtime stage
//! is distroless/static (CA bundle, passwd, tzdata; no libc) plus the worker
//! binary and the shared libraries `ldd` names, copied by the Dockerfile. The
//! root below holds exactly that much: the binary, its `ldd` libraries and the
//! CA bundle (the AWS SDK refuses to start without trust roots, even for an
//! http endpoint) — read-only, with no HOME and no config file. The test
//! profile's binary links the same libraries as the `image` profile's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::{spawn_app, stack_env, wait_for};

/// The libraries the Dockerfile copies today (~3 MiB). Another one would grow
/// the image: add it here only on purpose.
const EXPECTED_LIBRARIES: &[&str] = &[
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
];

/// The binary's shared libraries, from `ldd`.
fn shared_libraries(exe: &str) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .expect("ldd runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split("=>").nth(1).unwrap_or(l).trim();
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The image's root: the binary and its `ldd` libraries, plus the CA bundle
/// (at distroless/static-debian12's path) when `with_ca_bundle`.
fn image_root(with_ca_bundle: bool) -> Root {
    let exe = env!("CARGO_BIN_EXE_tts-worker");
    let libraries = shared_libraries(exe);
    assert!(!libraries.is_empty(), "ldd found no libraries");
    for lib in &libraries {
        let name = lib.file_name().unwrap().to_string_lossy();
        assert!(
            EXPECTED_LIBRARIES.contains(&name.as_ref()),
            "{name} is a new shared library: the image grows (see EXPECTED_LIBRARIES)"
        );
    }
    let root = Root(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ro-root-{}", uuid::Uuid::new_v4().simple())),
    );
    std::fs::create_dir_all(root.path()).unwrap();
    std::fs::copy(exe, root.path().join("tts-worker")).unwrap();
    for lib in &libraries {
        let target = root.path().join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(lib, &target).unwrap();
    }
    if with_ca_bundle {
        let bundle = "etc/ssl/certs/ca-certificates.crt";
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        std::fs::copy(Path::new("/").join(bundle), root.path().join(bundle)).unwrap();
    }
    root
}

/// Starts `/tts-worker run` chrooted into `root`, bind-mounted read-only in a
/// private mount namespace (checked: writing to it must fail), with only
/// `vars` in its environment (no HOME).
fn run_in(root: &Root, vars: &[(&str, String)]) -> tokio::process::Child {
    let script = r#"set -e
mount --bind "$1" "$1"
mount -o remount,bind,ro "$1"
if touch "$1/probe" 2>/dev/null; then echo "the root is writable" >&2; exit 3; fi
exec chroot "$1" /tts-worker run"#;
    tokio::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", script, "sh"])
        .arg(root.path())
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare runs")
}

async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut logs = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut logs).await;
    }
    logs
}

/// Everything the worker needs from its environment, for `app`'s simulator
/// and bucket, on a requests queue of its own.
fn worker_vars(app: &crate::helpers::TestApp, port: u16) -> Vec<(&'static str, String)> {
    let env = stack_env();
    let get = |k: &str| crate::helpers::env_value(&env, k);
    let queue = format!("{}.ro", app.requests_queue());
    vec![
        ("TTS__AMQP__URL", crate::common::amqp_url()),
        ("TTS__AMQP__REQUESTS_QUEUE", queue.clone()),
        (
            "TTS__AMQP__EVENTS_EXCHANGE",
            app.settings.amqp.events_exchange.clone(),
        ),
        ("TTS__AMQP__DEAD_LETTER_QUEUE", format!("{queue}.dead")),
        ("TTS__S3__ENDPOINT", get("TTS__S3__ENDPOINT")),
        ("TTS__S3__BUCKET", get("TTS__S3__BUCKET")),
        ("TTS__S3__REGION", get("TTS__S3__REGION")),
        ("TTS__S3__FORCE_PATH_STYLE", "true".into()),
        ("AWS_ACCESS_KEY_ID", get("AWS_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", get("AWS_SECRET_ACCESS_KEY")),
        ("SEGMIND_API_KEY", app.api_key.clone()),
        ("TTS__SEGMIND__BASE_URL", app.sim.base_url()),
        (
            "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
            app.sim.media_addr.to_string(),
        ),
        ("TTS__HTTP__ADDR", format!("127.0.0.1:{port}")),
        ("TTS__TELEMETRY__LOG_FORMAT", "json".into()),
    ]
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_binary_runs_alone_on_a_read_only_root_with_no_home() {
    let app = spawn_app().await;
    let root = image_root(true);
    let port = free_port();
    let vars = worker_vars(&app, port);
    let mut child = run_in(&root, &vars);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_for(
        "the binary to answer /readyz",
        Duration::from_secs(30),
        || async { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) },
    )
    .await;
    assert_eq!(reqwest::get(&healthz).await.unwrap().status(), 200);
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("it exits after SIGTERM")
        .unwrap();
    let logs = stderr_of(&mut child).await;
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    let queue = format!("{}.ro", app.requests_queue());
    let _ = app
        .channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    app.stop().await;
}

/// Without any CA certificate (an image built without the bundle), the worker
/// stops at start-up with a message saying what is missing, instead of the
/// AWS SDK's panic.
#[tokio::test]
async fn without_ca_certificates_it_says_so_instead_of_panicking() {
    let app = spawn_app().await;
    let root = image_root(false);
    let mut child = run_in(&root, &worker_vars(&app, free_port()));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("it stops by itself")
        .unwrap();
    let logs = stderr_of(&mut child).await;
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("no CA certificates found"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    app.stop().await;
}

/// The temporary root, removed when the test ends.
struct Root(PathBuf);

impl Root {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
