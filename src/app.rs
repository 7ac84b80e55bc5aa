//! Wiring: builds every component from [`Settings`] and runs the worker until
//! told to stop, reconnecting to the broker whenever it is lost. `main` and
//! the integration tests start exactly this.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use lapin::options::BasicQosOptions;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::{self, Leases, Publisher, Topology};
use crate::config::{Settings, TenantIdentity};
use crate::http::OpsServer;
use crate::metrics::Metrics;
use crate::segmind::SegmindClient;
use crate::storage::Storage;
use crate::worker::fleet::{self, Fleet};
use crate::worker::pause::PauseGate;
use crate::worker::{self, Consuming, JobContext, Pipeline, Stopped};

/// Longest wait at a session's start for the fleet stream to be read.
const FLEET_CATCH_UP: Duration = Duration::from_secs(15);

/// Longest wait between two attempts to reach a lost broker.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// What a broker connection carries; replaced whole after a broker loss.
struct Session {
    connection: Arc<lapin::Connection>,
    consuming: Consuming,
    publisher: Publisher,
}

impl Session {
    /// Connects, declares the topology (idempotently), sets the prefetch and
    /// opens the publishing channel in confirm mode.
    async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let amqp = &settings.amqp;
        let name = connection_name(&amqp.requests_queue);
        let connection = broker::connect(&amqp.url, amqp.connect_timeout, &name)
            .await
            .context("connecting to the broker (amqp.url)")?;
        let topology = Topology::from(settings);
        let channel = connection.create_channel().await?;
        broker::declare(&connection, &topology)
            .await
            .context("declaring queues and exchanges")?;
        if settings.tenants.identity == TenantIdentity::UserId {
            broker::check_impersonation(&connection)
                .await
                .context("checking that the worker may keep a producer's user_id")?;
        }
        let publisher = Publisher::new(connection.create_channel().await?, amqp.publish_timeout)
            .await
            .context("enabling publisher confirms")?;
        channel
            .basic_qos(settings.prefetch(), BasicQosOptions::default())
            .await?;
        Ok(Session {
            connection: Arc::new(connection),
            consuming: Consuming::new(channel, topology.lanes, name),
            publisher,
        })
    }

    /// Closes the consumer channel first, so prefetched deliveries go back to
    /// the queue at once, then the connection.
    async fn close(self) {
        if self.consuming.channel.status().connected()
            && let Err(e) = self
                .consuming
                .channel
                .close(200, "shutting down".into())
                .await
        {
            warn!(error = %e, "closing the consumer channel");
        }
        if self.connection.status().connected()
            && let Err(e) = self.connection.close(200, "shutting down".into()).await
        {
            warn!(error = %e, "closing the broker connection");
        }
    }
}

/// A worker ready to run: connected, topology declared, HTTP bound.
pub struct Application {
    settings: Settings,
    session: Session,
    pipeline: Arc<Pipeline>,
    metrics: Metrics,
    ops: OpsServer,
    ops_addr: SocketAddr,
    ready: Arc<AtomicBool>,
}

/// The AWS SDK panics at start-up when it finds no CA certificate at all
/// (even for an http endpoint), and the API client needs them for HTTPS: say
/// so plainly instead. Reads the same places the TLS clients read.
fn check_trust_store() -> anyhow::Result<()> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "no CA certificates found (SSL_CERT_FILE, SSL_CERT_DIR or the system store{}): install ca-certificates or point SSL_CERT_FILE at a PEM bundle",
            if why.is_empty() {
                String::new()
            } else {
                format!("; {}", why.join("; "))
            }
        );
    }
    Ok(())
}

impl Application {
    /// Connects to the broker, declares the topology and binds the operations
    /// endpoint. Storage is reached with the standard AWS credential chain.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        check_trust_store()?;
        let storage = Storage::new(&settings.s3).await;
        Self::build_with_storage(settings, storage).await
    }

    /// Like [`Application::build`] with a storage client made by the caller.
    pub async fn build_with_storage(settings: Settings, storage: Storage) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let api_key = settings.require_api_key()?.clone();
        let fleet = Fleet::new(
            &settings,
            connection_name("fleet").replace(' ', "-"),
            &metrics,
        );
        let segmind = SegmindClient::new(&settings.segmind, api_key, metrics.clone())
            .context("building the HTTP client")?
            .with_shares(
                settings.amqp.lanes.iter().map(|l| l.weight).collect(),
                settings.tenants.weights.clone(),
            )
            .with_gate(fleet.clone());
        let session = Session::open(&settings).await?;
        let ready = Arc::new(AtomicBool::new(false));
        let ops = OpsServer::bind(settings.http.addr, metrics.clone(), ready.clone())
            .await
            .with_context(|| format!("binding http.addr {}", settings.http.addr))?;
        let ops_addr = ops.local_addr()?;
        let pipeline = Pipeline::new(
            &settings,
            Arc::new(segmind),
            storage,
            metrics.clone(),
            PauseGate::new(metrics.clone()),
        )
        .with_fleet(fleet);
        // A known object beside the checkpoints: it tells a refused read of a
        // missing checkpoint (S3 without s3:ListBucket) from a real denial.
        if let Err(e) = pipeline.checkpoints.write_marker().await {
            warn!(error = %e, "could not write the checkpoint marker; a checkpoint read refused with 403 will pause consumption");
        }
        Ok(Application {
            settings,
            session,
            pipeline: Arc::new(pipeline),
            metrics,
            ops,
            ops_addr,
            ready,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Runs until `shutdown` resolves, then drains in-flight jobs within the
    /// grace period. A lost broker is reconnected with backoff; meanwhile
    /// `/readyz` reports not ready.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            settings,
            session,
            pipeline,
            metrics,
            ops,
            ops_addr,
            ready,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let ops_task = tokio::spawn(async move {
            if let Err(e) = ops.serve().await {
                warn!(error = %e, "operations endpoint stopped");
            }
        });
        let sweeper = tokio::spawn(sweep_parts(pipeline.clone()));
        let amqp = &settings.amqp;
        info!(%ops_addr, queue = %amqp.requests_queue, max_in_flight = amqp.max_in_flight, "tts-worker running");
        let runner = Runner {
            settings,
            pipeline,
            metrics,
            ready,
        };
        runner.run(session, stop_rx).await;
        ops_task.abort();
        sweeper.abort();
        info!("tts-worker stopped");
        Ok(())
    }
}

/// The long-lived parts, from which each broker session's context is made.
struct Runner {
    settings: Settings,
    pipeline: Arc<Pipeline>,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

impl Runner {
    fn job_context(&self, session: &Session) -> JobContext {
        JobContext {
            pipeline: self.pipeline.clone(),
            publisher: session.publisher.clone(),
            leases: Leases::new(
                session.connection.clone(),
                &self.settings.amqp.requests_queue,
            ),
            topology: Topology::from(&self.settings),
            limits: self.settings.limits.clone(),
            tenants: self.settings.tenants.identity,
            reply_to: self.settings.amqp.reply_to.clone(),
            max_bytes_in_flight: self.settings.amqp.max_bytes_in_flight,
            event_source: format!("tts-worker/{}", hostname()),
        }
    }

    /// Runs sessions until shutdown, reconnecting after each broker loss.
    async fn run(&self, mut session: Session, stop: watch::Receiver<bool>) {
        let mut wait = Duration::from_secs(1);
        loop {
            let depth_task = tokio::spawn(refresh_queue_depth(
                session.connection.clone(),
                Topology::from(&self.settings),
                self.metrics.clone(),
                self.settings.amqp.queue_depth_interval,
            ));
            // The fleet's stream: tailed and appended to for the session.
            let fleet_task = tokio::spawn(fleet::run(
                self.pipeline.fleet.clone(),
                session.connection.clone(),
                session.publisher.clone(),
                self.pipeline.learning(),
            ));
            // Nothing is taken before the day's spending and the
            // cancellations are read (bounded: a slow stream only delays).
            if !self.pipeline.fleet.caught_up(FLEET_CATCH_UP).await {
                warn!(
                    "the fleet stream was not read up to date in time; consuming anyway (caps and cancellations may lag)"
                );
            }
            let ctx = Arc::new(self.job_context(&session));
            let stopped = worker::run(
                ctx,
                &session.consuming,
                usize::from(self.settings.prefetch()),
                &self.ready,
                stop.clone(),
                self.settings.shutdown.grace_period,
            )
            .await;
            depth_task.abort();
            fleet_task.abort();
            session.close().await;
            match stopped {
                Stopped::Shutdown => return,
                Stopped::BrokerLost(reason) => warn!(%reason, "broker session lost; reconnecting"),
            }
            session = loop {
                let mut stop = stop.clone();
                // Jittered: a fleet that lost the broker together does not
                // reconnect to a recovering broker in lockstep.
                let jittered = crate::worker::pause::jittered(wait, &mut rand::rng());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {
                        info!("shutdown asked while the broker was unreachable");
                        return;
                    }
                    _ = tokio::time::sleep(jittered) => {}
                }
                match Session::open(&self.settings).await {
                    Ok(s) => {
                        info!("reconnected to the broker");
                        wait = Duration::from_secs(1);
                        break s;
                    }
                    Err(e) => {
                        wait = (wait * 2).min(MAX_RECONNECT_WAIT);
                        warn!(error = %format!("{e:#}"), retry_in_s = wait.as_secs_f64(), "broker still unreachable");
                    }
                }
            };
        }
    }
}

/// How often a replica deletes the part objects failed jobs left once their
/// resume window and this interval have passed (a job still running that
/// long keeps them that much longer): none outlives the window by more than
/// twice this, an hour.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Sweeps the part objects failed jobs left (`Checkpoints::sweep_parts`): every
/// [`SWEEP_INTERVAL`], the first time at a jittered point of it so that a
/// fleet does not list the bucket in lockstep.
async fn sweep_parts(pipeline: Arc<Pipeline>) {
    let first = crate::worker::pause::jittered(SWEEP_INTERVAL / 2, &mut rand::rng());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let swept = pipeline
            .checkpoints
            .sweep_parts(
                pipeline.jobs.resume_window + SWEEP_INTERVAL,
                chrono::Utc::now(),
            )
            .await;
        match swept {
            Ok(0) => {}
            Ok(deleted) => info!(
                deleted,
                "deleted part objects left past their resume window"
            ),
            Err(e) => {
                warn!(error = %e, "could not sweep old part objects; the next sweep tries again")
            }
        }
    }
}

/// Keeps `tts_queue_depth` current for the requests and dead-letter queues.
async fn refresh_queue_depth(
    connection: Arc<lapin::Connection>,
    topology: Topology,
    metrics: Metrics,
    every: Duration,
) {
    let mut channel: Option<lapin::Channel> = None;
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if !channel.as_ref().is_some_and(|c| c.status().connected()) {
            channel = connection.create_channel().await.ok();
        }
        let Some(ch) = &channel else { continue };
        for queue in topology.lanes.iter().chain([&topology.dead_letter_queue]) {
            match broker::queue_depth(ch, queue).await {
                Ok(n) => metrics
                    .queue_depth
                    .with_label_values(&[queue.as_str()])
                    .set(i64::from(n)),
                Err(e) => warn!(queue = %queue, error = %e, "could not read queue depth"),
            }
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Shown in the broker's connection list: host, process and queue, plus a
/// random part so a reconnection is told apart from its predecessor.
fn connection_name(queue: &str) -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "tts-worker@{}:{} {queue} {}",
        hostname(),
        std::process::id(),
        &nonce[..8]
    )
}
