//! Wiring: builds every component from [`Settings`] and runs the worker until
//! told to stop. `main` and the integration tests start exactly this.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tracing::{info, warn};

use crate::broker::{self, Publisher, Topology};
use crate::config::Settings;
use crate::http::OpsServer;
use crate::metrics::Metrics;
use crate::segmind::SegmindClient;
use crate::storage::Storage;
use crate::worker::{self, JobContext};

/// A worker ready to run: connected, topology declared, HTTP bound.
pub struct Application {
    settings: Settings,
    connection: Arc<lapin::Connection>,
    /// The channel `consumer` lives on; closed first at shutdown so prefetched
    /// but unstarted deliveries go back to the queue at once.
    consume_channel: lapin::Channel,
    consumer: lapin::Consumer,
    ctx: Arc<JobContext>,
    ops: OpsServer,
    ops_addr: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl Application {
    /// Connects to the broker, declares the topology, starts consuming and
    /// binds the operations endpoint. Storage is reached with the standard
    /// AWS credential chain.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let storage = Storage::new(&settings.s3).await;
        Self::build_with_storage(settings, storage).await
    }

    /// Like [`Application::build`] with a storage client made by the caller.
    pub async fn build_with_storage(settings: Settings, storage: Storage) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let api_key = settings.require_api_key()?.clone();
        let segmind = SegmindClient::new(&settings.segmind, api_key, metrics.clone())
            .context("building the HTTP client")?;
        let amqp = &settings.amqp;
        let connection = broker::connect(&amqp.url, amqp.connect_timeout, &connection_name())
            .await
            .context("connecting to the broker (amqp.url)")?;
        let topology = Topology::from(amqp);
        let channel = connection.create_channel().await?;
        broker::declare(&channel, &topology)
            .await
            .context("declaring queues and exchanges")?;
        let publisher = Publisher::new(connection.create_channel().await?, amqp.publish_timeout)
            .await
            .context("enabling publisher confirms")?;
        channel
            .basic_qos(amqp.max_in_flight, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                topology.requests_queue.as_str().into(),
                connection_name().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("consuming the requests queue")?;

        let ready = Arc::new(AtomicBool::new(false));
        let ops = OpsServer::bind(settings.http.addr, metrics.clone(), ready.clone())
            .await
            .with_context(|| format!("binding http.addr {}", settings.http.addr))?;
        let ops_addr = ops.local_addr()?;

        let ctx = Arc::new(JobContext {
            segmind,
            storage,
            publisher,
            metrics,
            topology,
            limits: settings.limits.clone(),
            s3_prefix: settings.s3.prefix.clone(),
            job_deadline: settings.segmind.job_deadline,
            block_patterns: settings.segmind.content_blocked_patterns.clone(),
            event_source: format!("tts-worker/{}", hostname()),
        });
        Ok(Application {
            settings,
            connection: Arc::new(connection),
            consume_channel: channel,
            consumer,
            ctx,
            ops,
            ops_addr,
            ready,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Runs until `shutdown` resolves (then drains in-flight jobs within the
    /// grace period) or the broker connection fails.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            settings,
            connection,
            consume_channel,
            consumer,
            ctx,
            ops,
            ops_addr,
            ready,
        } = self;
        info!(%ops_addr, queue = %ctx.topology.requests_queue, max_in_flight = settings.amqp.max_in_flight, "tts-worker running");
        let ops_task = tokio::spawn(async move {
            if let Err(e) = ops.serve().await {
                warn!(error = %e, "operations endpoint stopped");
            }
        });
        let depth_task = tokio::spawn(refresh_queue_depth(
            connection.clone(),
            ctx.topology.clone(),
            ctx.metrics.clone(),
            settings.amqp.queue_depth_interval,
        ));
        let result = worker::run(
            ctx,
            consumer,
            usize::from(settings.amqp.max_in_flight),
            ready,
            shutdown,
            settings.shutdown.grace_period,
        )
        .await;
        depth_task.abort();
        ops_task.abort();
        if let Err(e) = consume_channel.close(200, "shutting down".into()).await {
            warn!(error = %e, "closing the consumer channel");
        }
        if let Err(e) = connection.close(200, "shutting down".into()).await {
            warn!(error = %e, "closing the broker connection");
        }
        info!("tts-worker stopped");
        result.context("consuming requests")
    }
}

/// Keeps `tts_queue_depth` current for the requests and dead-letter queues.
async fn refresh_queue_depth(
    connection: Arc<lapin::Connection>,
    topology: Topology,
    metrics: Metrics,
    every: std::time::Duration,
) {
    let mut channel: Option<lapin::Channel> = None;
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if !channel.as_ref().is_some_and(|c| c.status().connected()) {
            channel = connection.create_channel().await.ok();
        }
        let Some(ch) = &channel else { continue };
        for queue in [&topology.requests_queue, &topology.dead_letter_queue] {
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

fn connection_name() -> String {
    format!("tts-worker@{}:{}", hostname(), std::process::id())
}
