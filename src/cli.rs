//! Command-line interface of the `tts-worker` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::Settings;
use crate::submit::SubmitArgs;

/// Turns text-to-speech requests from RabbitMQ into audio in S3, via Segmind's
/// Gemini 2.5 Pro TTS.
#[derive(Debug, Parser)]
#[command(name = "tts-worker", version)]
pub struct Cli {
    /// Configuration file layered over the defaults (env vars TTS__SECTION__KEY override both).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker until SIGTERM/SIGINT.
    Run,
    /// Publish a request; with --wait, wait for its event and save the audio.
    Submit(Box<SubmitArgs>),
    /// Validate the configuration and check the broker, bucket and API are reachable.
    Check,
    /// Cancel a job: publish {"job_id": …} to the control exchange.
    Cancel {
        /// The job id the request was sent with.
        #[arg(long = "job-id")]
        job_id: String,
    },
}

/// The container's memory limit, from its cgroup (v2 `memory.max`, else
/// v1 `memory.limit_in_bytes`); `None` when unlimited or unknown.
fn container_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|v| v.trim().parse::<u64>().ok())
    // v1 reports "no limit" as a huge number rather than "max".
    .filter(|b| *b < 1 << 60)
}

/// Runs the parsed command; `main` only maps the result to an exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    let telemetry = crate::telemetry::init(&settings.telemetry)?;
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    if let Some(warning) = settings.memory_warning(container_memory_limit()) {
        tracing::warn!("{warning}");
    }
    let code = match cli.command {
        Command::Run => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
            ExitCode::SUCCESS
        }
        Command::Submit(args) => {
            if crate::submit::run(&settings, *args).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Cancel { job_id } => {
            crate::submit::cancel(&settings, &job_id).await?;
            ExitCode::SUCCESS
        }
        Command::Check => {
            if crate::check::run(&settings).await {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    };
    telemetry.shutdown();
    Ok(code)
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Formats an error with its whole cause chain, for the last line on stderr.
pub fn report(err: &anyhow::Error) -> String {
    if err.downcast_ref::<crate::config::ConfigError>().is_some() {
        // The message already names the key; `check` would fail the same way.
        format!("error: {err:#}")
    } else {
        format!(
            "error: {err:#}\nhint: run `tts-worker check` to diagnose configuration and connectivity"
        )
    }
}
