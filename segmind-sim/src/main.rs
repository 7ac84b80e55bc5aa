//! `segmind-sim`: the Segmind API simulator as a standalone server.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use segmind_sim::{LatencyDist, OutputMode, RateScope, SimConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    /// ~43.5 s per job, like the real service.
    Realistic,
    /// A few seconds per job, 50 submits a minute.
    Demo,
    /// Sub-second jobs, no limits.
    Fast,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Url,
    DataUri,
    Base64,
}

/// Simulates Segmind's serverless API (v2 async and v1 sync) for Gemini 2.5 Pro TTS.
#[derive(Debug, Parser)]
#[command(name = "segmind-sim", version)]
struct Args {
    /// API listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Media (CDN) listen address: another origin than the API.
    #[arg(long, default_value = "127.0.0.1:8091")]
    media_listen: SocketAddr,
    /// Base URL of the media host in result URLs, when clients reach it by
    /// another name than the listen address (e.g. http://segmind-sim:8091).
    #[arg(long)]
    media_public_url: Option<String>,
    /// The accepted API key.
    #[arg(long, env = "SEGMIND_API_KEY")]
    api_key: String,
    #[arg(long, value_enum, default_value = "demo")]
    preset: Preset,
    /// Override the preset's mean inference time (seconds).
    #[arg(long)]
    latency: Option<f64>,
    /// Override the preset's latency spread (seconds): half-width of a
    /// uniform spread, or standard deviation of a normal one.
    #[arg(long)]
    latency_spread: Option<f64>,
    #[arg(long, value_enum, default_value = "uniform")]
    latency_dist: Dist,
    /// Seconds of latency added per character of text.
    #[arg(long, default_value_t = 0.0)]
    latency_per_char: f64,
    /// Which calls the rate limit counts.
    #[arg(long, value_enum, default_value = "submits")]
    rate_limit_scope: Scope,
    /// Seconds a result is kept before its id answers 404.
    #[arg(long, default_value_t = 3600)]
    retention: u64,
    /// Calls per minute before 429 (0 = unlimited).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Credit balance (406 when spent); unlimited if absent.
    #[arg(long)]
    credits: Option<f64>,
    /// Probability of a random 500/502/504 on any API call.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    #[arg(long, value_enum, default_value = "url")]
    output: Output,
    /// Never use espeak-ng, even when installed (tone audio instead).
    #[arg(long)]
    no_espeak: bool,
    /// `realistic`: audio as long as the text takes to speak (≈ 15
    /// characters a second by voice), silently cut at Gemini's 512 s cap;
    /// `words`: a tone per word.
    #[arg(long, value_enum, default_value = "words")]
    speech: Speech,
    /// With `--speech realistic`: share of jobs silently truncated to 13–46 %.
    #[arg(long, default_value_t = 0.0)]
    truncation_rate: f64,
    /// With `--speech realistic`: how fast voices speak, as a share of their
    /// usual pace (a "read slowly" direction: ≈ 0.5).
    #[arg(long, default_value_t = 1.0)]
    pace: f64,
    /// The container results are served in: Gemini's PCM wrapped in WAV, or
    /// encoded as MP3 (what Segmind does is unknown).
    #[arg(long, value_enum, default_value = "wav")]
    container: ContainerArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ContainerArg {
    Wav,
    Mp3,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Speech {
    Words,
    Realistic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dist {
    Uniform,
    Normal,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scope {
    Submits,
    All,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match args.preset {
        Preset::Realistic => SimConfig::realistic(&args.api_key),
        Preset::Demo => SimConfig::demo(&args.api_key),
        Preset::Fast => SimConfig::fast(&args.api_key),
    };
    if let Some(l) = args.latency {
        config.latency_mean = Duration::try_from_secs_f64(l)?;
        config.latency_spread = config.latency_spread.min(config.latency_mean / 2);
    }
    if let Some(s) = args.latency_spread {
        config.latency_spread = Duration::try_from_secs_f64(s)?;
    }
    config.latency_dist = match args.latency_dist {
        Dist::Uniform => LatencyDist::Uniform,
        Dist::Normal => LatencyDist::Normal,
    };
    config.latency_per_char = Duration::try_from_secs_f64(args.latency_per_char)?;
    config.rate_limit_scope = match args.rate_limit_scope {
        Scope::Submits => RateScope::Submits,
        Scope::All => RateScope::AllCalls,
    };
    config.retention = Duration::from_secs(args.retention);
    if let Some(r) = args.rate_limit {
        config.rate_limit_per_minute = (r > 0).then_some(r);
    }
    config.credits = args.credits;
    config.media_public_url = args.media_public_url.clone();
    config.fault_rate = args.fault_rate;
    config.output_mode = match args.output {
        Output::Url => OutputMode::Url,
        Output::DataUri => OutputMode::DataUri,
        Output::Base64 => OutputMode::Base64,
    };
    config.speech = match args.speech {
        Speech::Words => segmind_sim::model::SpeechModel::Words,
        Speech::Realistic => segmind_sim::model::SpeechModel::Realistic {
            cap: segmind_sim::model::OUTPUT_CAP,
        },
    };
    config.truncation_rate = args.truncation_rate;
    config.pace = args.pace;
    config.container = match args.container {
        ContainerArg::Wav => segmind_sim::Container::Wav,
        ContainerArg::Mp3 => segmind_sim::Container::Mp3,
    };
    if args.no_espeak {
        config.espeak = false;
    }
    let espeak = config.espeak;
    let handle = segmind_sim::spawn(config, args.listen, args.media_listen).await?;
    tracing::info!(
        api = %handle.api_addr,
        media = %handle.media_addr,
        espeak,
        "segmind-sim listening"
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
