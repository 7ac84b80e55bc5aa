//! Test harness: a worker built exactly as `main` builds it, against real
//! RabbitMQ and Garage, with an in-process Segmind simulator. Every test gets
//! its own queue names, exchange and S3 prefix, so tests run in parallel.

use std::future::Future;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Channel, Connection};
use segmind_sim::{SimConfig, SimHandle};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tts_worker::testing::app::Application;
use tts_worker::testing::broker::{self, Publisher};
use tts_worker::testing::config::Settings;
use tts_worker::testing::storage::Storage;
use tts_worker::testing::wire::{self, CloudEvent, EventData};

pub use crate::common::{env_value, metric_at, stack_env};

/// Waits until `condition` holds, checking every 50 ms; panics naming `what`
/// after `timeout`. Tests wait on conditions, never on fixed sleeps.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Settings for one test: unique names, fast schedules, the simulator's URL.
pub fn test_settings(sim: &SimHandle, api_key: &str, tag: &str) -> Settings {
    let mut env = stack_env();
    env.retain(|(k, _)| !k.starts_with("TTS__AMQP__") || k == "TTS__AMQP__URL");
    let overrides = [
        ("TTS__SEGMIND__BASE_URL", sim.base_url()),
        // The simulator's media host is on loopback: listed, as an operator
        // lists an in-cluster media proxy.
        (
            "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
            sim.media_addr.to_string(),
        ),
        ("TTS__SEGMIND__API_KEY", api_key.to_owned()),
        ("TTS__AMQP__REQUESTS_QUEUE", format!("{tag}.requests")),
        ("TTS__AMQP__EVENTS_EXCHANGE", format!("{tag}.events")),
        ("TTS__AMQP__EVENTS_QUEUE", format!("{tag}.events")),
        (
            "TTS__AMQP__DEAD_LETTER_QUEUE",
            format!("{tag}.requests.dead"),
        ),
        ("TTS__AMQP__MAX_IN_FLIGHT", "32".into()),
        ("TTS__FLEET__STREAM", format!("{tag}.fleet")),
        ("TTS__FLEET__CONTROL_EXCHANGE", format!("{tag}.control")),
        ("TTS__AMQP__QUEUE_DEPTH_INTERVAL", "0.2".into()),
        ("TTS__HTTP__ADDR", "127.0.0.1:0".into()),
        ("TTS__S3__PREFIX", format!("{tag}/")),
        // The simulator's `fast` preset: jobs of 0.25 ± 0.1 s.
        ("TTS__SEGMIND__POLL_PRIOR_LATENCY", "0.25".into()),
        ("TTS__SEGMIND__POLL_PRIOR_SPREAD", "0.1".into()),
        ("TTS__SEGMIND__POLL_TARGET_LAG", "0.05".into()),
        ("TTS__SEGMIND__POLL_MAX", "0.2".into()),
        ("TTS__SEGMIND__RETRY_BASE", "0.05".into()),
        ("TTS__SEGMIND__RETRY_MAX", "0.5".into()),
        ("TTS__SEGMIND__JOB_DEADLINE", "30".into()),
        ("TTS__SHUTDOWN__GRACE_PERIOD", "5".into()),
    ];
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Settings::load_from(None, &env).expect("test settings are valid")
}

pub fn storage_for(settings: &Settings) -> Storage {
    let env = stack_env();
    Storage::with_static_credentials(
        &settings.s3,
        &env_value(&env, "AWS_ACCESS_KEY_ID"),
        &env_value(&env, "AWS_SECRET_ACCESS_KEY"),
    )
}

/// A running worker plus handles to inspect what it did.
pub struct TestApp {
    pub sim: SimHandle,
    pub settings: Settings,
    pub api_key: String,
    pub ops_addr: SocketAddr,
    pub channel: Channel,
    pub publisher: Publisher,
    pub storage: Storage,
    connection: Connection,
    shutdown: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, |_| {}).await
}

/// Starts a simulator and a worker; the closures adjust their configuration.
pub async fn spawn_app_with(
    sim_config: impl FnOnce(&mut SimConfig),
    settings_fn: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_app_with_storage(sim_config, settings_fn, storage_for).await
}

/// Like [`spawn_app_with`], with the worker's storage client made by `storage`.
pub async fn spawn_app_with_storage(
    sim_config: impl FnOnce(&mut SimConfig),
    settings_fn: impl FnOnce(&mut Settings),
    storage: impl FnOnce(&Settings) -> Storage,
) -> TestApp {
    let api_key = format!("sk-test-{}", uuid::Uuid::new_v4().simple());
    let mut config = SimConfig::fast(&api_key);
    config.espeak = false; // tone audio: fast and deterministic
    sim_config(&mut config);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = segmind_sim::spawn(config, any, any)
        .await
        .expect("simulator starts");
    let tag = format!("t-{}", uuid::Uuid::new_v4().simple());
    let mut settings = test_settings(&sim, &api_key, &tag);
    settings_fn(&mut settings);

    let storage = storage(&settings);
    let (ops_addr, tx, worker) = start_worker(&settings, &storage).await;

    let connection = broker::connect(&settings.amqp.url, Duration::from_secs(10), "tests")
        .await
        .expect("test connection");
    let channel = connection.create_channel().await.expect("test channel");
    let publisher = Publisher::new(
        connection.create_channel().await.unwrap(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    TestApp {
        sim,
        settings,
        api_key,
        ops_addr,
        channel,
        publisher,
        storage,
        connection,
        shutdown: Some(tx),
        worker: Some(worker),
    }
}

type WorkerHandle = (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
);

async fn start_worker(settings: &Settings, storage: &Storage) -> WorkerHandle {
    let app = Application::build_with_storage(settings.clone(), storage.clone())
        .await
        .expect("the worker starts");
    let ops_addr = app.ops_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let worker = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    (ops_addr, tx, worker)
}

/// Another worker on a [`TestApp`]'s queues, bucket prefix and simulator,
/// with settings of its own (a replica of another release, say).
pub struct Replica {
    pub ops_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Replica {
    /// Stops it as SIGTERM would.
    pub async fn stop(mut self) {
        stop_task(&mut self.shutdown, &mut self.worker).await;
    }

    /// The value of one of its metric samples, if exposed.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_at(self.ops_addr, sample).await
    }
}

/// Stops a worker started by [`start_worker`] as SIGTERM would, and waits
/// for it to end cleanly.
async fn stop_task(
    shutdown: &mut Option<oneshot::Sender<()>>,
    worker: &mut Option<JoinHandle<anyhow::Result<()>>>,
) {
    if let Some(tx) = shutdown.take() {
        let _ = tx.send(());
    }
    if let Some(worker) = worker.take() {
        worker
            .await
            .expect("worker task")
            .expect("worker stops cleanly");
    }
}

/// The real binary, running; see [`TestApp::spawn_binary`].
pub struct BinaryWorker {
    child: tokio::process::Child,
    logs: JoinHandle<String>,
    /// Its requests queue.
    pub queue: String,
}

impl BinaryWorker {
    /// Publishes a request to the binary's queue, once it has declared it.
    pub async fn publish(&self, app: &TestApp, body: &[u8]) {
        self.publish_with(app, body, BasicProperties::default())
            .await
    }

    /// Like [`BinaryWorker::publish`], with the message's properties.
    pub async fn publish_with(&self, app: &TestApp, body: &[u8], properties: BasicProperties) {
        let mut published = false;
        for _ in 0..100 {
            if app
                .publisher
                .publish("", &self.queue, body, properties.clone(), true)
                .await
                .is_ok()
            {
                published = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(published, "the binary never declared {}", self.queue);
    }

    /// Sends SIGTERM and returns how it exited and everything it logged.
    pub async fn terminate(mut self, app: &TestApp) -> (ExitStatus, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status.expect("the binary's status"),
            Err(_) => {
                let _ = self.child.start_kill();
                let logs = self.logs.await.unwrap_or_default();
                panic!("the binary did not exit after SIGTERM; its logs:\n{logs}");
            }
        };
        let logs = self.logs.await.expect("log reader");
        let _ = app
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        (status, logs)
    }
}

/// A decoded event and the AMQP properties it came with.
pub struct Received {
    pub event: CloudEvent<EventData>,
    pub properties: BasicProperties,
    pub raw: Vec<u8>,
}

impl Received {
    pub fn completed(&self) -> &wire::CompletedData {
        match &self.event.data {
            EventData::Completed(c) => c,
            EventData::Failed(f) => panic!("expected completed, got failed: {f:?}"),
            EventData::Progress(p) => panic!("expected completed, got progress: {p:?}"),
        }
    }

    pub fn failed(&self) -> &wire::FailedData {
        match &self.event.data {
            EventData::Failed(f) => f,
            EventData::Completed(c) => panic!("expected failed, got completed: {c:?}"),
            EventData::Progress(p) => panic!("expected failed, got progress: {p:?}"),
        }
    }
}

impl TestApp {
    /// Waits until no intermediate part object (`*.wav` under the worker's
    /// `_parts/`) is left for `job_id` (every job's, when `None`): what
    /// the worker deletes once a completed job's delivery is acked.
    pub async fn wait_for_no_part_objects(&self, job_id: Option<&str>) {
        let dir = format!(
            "{}_parts/{}",
            self.settings.s3.prefix,
            job_id.map(|j| format!("{j}/")).unwrap_or_default()
        );
        wait_for(
            "the intermediate part objects to be deleted",
            Duration::from_secs(10),
            || async {
                let left = self.storage.list(&dir).await.unwrap_or_default();
                !left.iter().any(|(k, _)| k.ends_with(".wav"))
            },
        )
        .await;
    }

    pub fn requests_queue(&self) -> &str {
        &self.settings.amqp.requests_queue
    }

    pub fn events_queue(&self) -> &str {
        self.settings
            .amqp
            .events_queue
            .as_deref()
            .expect("events queue configured")
    }

    /// Publishes raw bytes as a request.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.publisher
            .publish("", self.requests_queue(), body, properties, true)
            .await
            .expect("request published");
    }

    pub async fn publish_json(&self, body: serde_json::Value) {
        self.publish_raw(body.to_string().as_bytes(), BasicProperties::default())
            .await;
    }

    /// Takes one message from `queue`, waiting up to `timeout`.
    pub async fn get_from(
        &self,
        queue: &str,
        timeout: Duration,
    ) -> Option<lapin::message::BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .expect("basic.get");
            if let Some(message) = got {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                return Some(message);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next terminal event on the events queue.
    pub async fn next_event(&self) -> Received {
        let queue = self.events_queue().to_owned();
        self.next_event_from(&queue).await
    }

    pub async fn next_event_from(&self, queue: &str) -> Received {
        self.next_event_within(queue, Duration::from_secs(30)).await
    }

    /// The next terminal event on `queue`, waiting up to `timeout` (long
    /// jobs rendered in a debug build take a while). Progress events on a
    /// queue bound to them are checked and passed over.
    pub async fn next_event_within(&self, queue: &str, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let received = self
                .next_any_event_within(queue, left)
                .await
                .unwrap_or_else(|| panic!("no event on {queue} within {timeout:?}"));
            if !matches!(received.event.data, wire::EventData::Progress(_)) {
                return received;
            }
        }
    }

    /// The next event of any type on `queue`, checked against the contract.
    pub async fn next_any_event_within(&self, queue: &str, timeout: Duration) -> Option<Received> {
        let message = self.get_from(queue, timeout).await?;
        let raw = message.delivery.data.clone();
        // Every event a test reads is checked against the contract.
        crate::schemas::assert_valid_event(&raw);
        let event = wire::decode_event(&raw).expect("events are valid CloudEvents");
        Some(Received {
            event,
            properties: message.delivery.properties.clone(),
            raw,
        })
    }

    /// The next dead-lettered message.
    pub async fn next_dead_letter(&self) -> lapin::message::BasicGetMessage {
        let queue = self.settings.amqp.dead_letter_queue.clone();
        self.get_from(&queue, Duration::from_secs(10))
            .await
            .expect("a dead-letter copy within 10 s")
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.ops_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the worker (as SIGTERM would) and starts a new one on the same
    /// queues, bucket prefix and simulator, with `adjust` applied.
    pub async fn restart_worker(&mut self, adjust: impl FnOnce(&mut Settings)) {
        self.stop_worker().await;
        adjust(&mut self.settings);
        let (ops_addr, tx, worker) = start_worker(&self.settings, &self.storage).await;
        self.ops_addr = ops_addr;
        self.shutdown = Some(tx);
        self.worker = Some(worker);
    }

    /// Stops the worker, leaving queues in place.
    pub async fn stop_worker(&mut self) {
        stop_task(&mut self.shutdown, &mut self.worker).await;
    }

    /// Messages ready in the requests queue, once the count has settled:
    /// a quorum queue takes back returned deliveries a few milliseconds after
    /// the channel that held them closes.
    pub async fn requests_ready(&self) -> u32 {
        let depth = || async {
            broker::queue_depth(&self.channel, self.requests_queue())
                .await
                .expect("requests queue exists")
        };
        let mut last = depth().await;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = depth().await;
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// Closes the worker's broker connection from the broker's side, as a
    /// broker restart or network cut would.
    pub fn kill_worker_connection(&self) -> usize {
        let mut closed = 0;
        for pid in self.worker_connections() {
            let status = crate::common::rabbitmqctl()
                .args([
                    "-q",
                    "close_connection",
                    &pid,
                    "test: simulated broker loss",
                ])
                .status()
                .expect("rabbitmqctl runs");
            closed += usize::from(status.success());
        }
        closed
    }

    /// The broker's ids of the worker's open connections (their names
    /// carry the requests queue).
    pub fn worker_connections(&self) -> Vec<String> {
        let out = crate::common::rabbitmqctl()
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl runs");
        let queue = format!(" {} ", self.requests_queue());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&queue))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// The value of a metric sample line (`name{labels}`), if exposed.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_at(self.ops_addr, sample).await
    }

    /// Starts another worker beside this app's, on the same queues, bucket
    /// prefix and simulator, with `adjust` applied to a copy of its settings.
    pub async fn start_replica(&self, adjust: impl FnOnce(&mut Settings)) -> Replica {
        let mut settings = self.settings.clone();
        adjust(&mut settings);
        let (ops_addr, tx, worker) = start_worker(&settings, &self.storage).await;
        Replica {
            ops_addr,
            shutdown: Some(tx),
            worker: Some(worker),
        }
    }

    /// Runs the real `tts-worker` binary, as an operator would, on a requests
    /// queue of its own (`{requests}.bin`) and this app's events exchange,
    /// simulator and bucket prefix. `vars` are added to its environment.
    pub async fn spawn_binary(&self, vars: &[(&str, String)]) -> BinaryWorker {
        let mut env = stack_env();
        env.retain(|(k, _)| {
            !k.starts_with("TTS__")
                && !k.starts_with("OTEL_")
                && k != "SEGMIND_API_KEY"
                && k != "RUST_LOG"
        });
        env.extend(
            stack_env()
                .into_iter()
                .filter(|(k, _)| k.starts_with("TTS__S3__")),
        );
        let amqp = &self.settings.amqp;
        let queue = format!("{}.bin", amqp.requests_queue);
        let base = [
            ("SEGMIND_API_KEY", self.api_key.clone()),
            ("TTS__SEGMIND__BASE_URL", self.sim.base_url()),
            (
                "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE",
                self.sim.media_addr.to_string(),
            ),
            ("TTS__SEGMIND__POLL_PRIOR_LATENCY", "0.25".into()),
            ("TTS__SEGMIND__POLL_PRIOR_SPREAD", "0.1".into()),
            ("TTS__SEGMIND__POLL_TARGET_LAG", "0.05".into()),
            ("TTS__AMQP__URL", crate::common::amqp_url()),
            ("TTS__AMQP__REQUESTS_QUEUE", queue.clone()),
            ("TTS__AMQP__EVENTS_EXCHANGE", amqp.events_exchange.clone()),
            (
                "TTS__AMQP__EVENTS_QUEUE",
                amqp.events_queue.clone().unwrap_or_default(),
            ),
            (
                "TTS__AMQP__DEAD_LETTER_QUEUE",
                amqp.dead_letter_queue.clone(),
            ),
            ("TTS__HTTP__ADDR", "127.0.0.1:0".into()),
            ("TTS__S3__PREFIX", self.settings.s3.prefix.clone()),
        ];
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
            .arg("run")
            .env_clear()
            .envs(env)
            .envs(base.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        // Read both pipes as the binary writes: a full pipe would block it.
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let logs = tokio::spawn(async move {
            let (mut err, mut out) = (String::new(), String::new());
            let _ = tokio::join!(
                stderr.read_to_string(&mut err),
                stdout.read_to_string(&mut out)
            );
            err + &out
        });
        BinaryWorker { child, logs, queue }
    }

    pub async fn ready(&self) -> u16 {
        match reqwest::get(format!("http://{}/readyz", self.ops_addr)).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Stops the worker and returns how many requests are left in the queue
    /// (unacked deliveries return to it when the worker's connection closes).
    pub async fn stop(mut self) -> u32 {
        self.stop_worker().await;
        // Events no test read are checked against the contract too.
        if let Some(queue) = self.settings.amqp.events_queue.clone() {
            while let Ok(Some(message)) = self
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                crate::schemas::assert_valid_event(&message.delivery.data);
                let _ = message.delivery.acker.ack(BasicAckOptions::default()).await;
            }
        }
        let left = self.requests_ready().await;
        self.cleanup().await;
        left
    }

    pub async fn cleanup(&self) {
        let amqp = &self.settings.amqp;
        let queues = [
            Some(amqp.requests_queue.as_str()),
            Some(amqp.dead_letter_queue.as_str()),
            amqp.events_queue.as_deref(),
        ];
        let lanes = amqp.lanes.iter().map(|l| Some(l.queue.as_str()));
        let fleet = self.settings.fleet.stream.as_deref();
        for q in queues.into_iter().chain(lanes).chain([fleet]).flatten() {
            let _ = self
                .channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let usage =
            fleet.map(|f| format!("{f}{}", tts_worker::testing::worker::fleet::USAGE_SUFFIX));
        for exchange in [&amqp.events_exchange, &self.settings.fleet.control_exchange]
            .into_iter()
            .chain(usage.as_ref())
        {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// Runs `rabbitmqctl` of the broker under test with `args`; whether it
/// succeeded (a policy key an older broker does not know is refused).
pub fn rabbitmqctl(args: &[&str]) -> bool {
    crate::common::rabbitmqctl()
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What `rabbitmqctl` of the broker under test prints for `args` (empty
/// when it fails).
pub fn rabbitmqctl_output(args: &[&str]) -> String {
    crate::common::rabbitmqctl()
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
