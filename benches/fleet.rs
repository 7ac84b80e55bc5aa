//! Fleet benchmark: the worker binary (release build) against real RabbitMQ
//! and Garage and an in-process Segmind simulator, measured side by side.
//!
//! ```text
//! cargo bench --bench fleet -- scale [--jobs 10000] [--variants learned,finishes,all-starting,fixed1,fixed5]
//!                                    [--latency 43.5] [--spread 8] [--per-char 0]
//!                                    [--arrival 0]   (jobs per second; 0 = all at once)
//! cargo bench --bench fleet -- rate  [--jobs 60] [--workers 3] [--limit 50] [--scope all|submits]
//!                                    [--variants coordinated,alone]
//! cargo bench --bench fleet -- lanes [--jobs 30] [--parts 6] [--interactive 10] [--limit 60]
//!                                    [--latency 5] [--spread 0.5]
//! ```
//!
//! `scale` runs one worker per variant (the learned schedule; the same with
//! every job of the backlog starting at once, no `jobs.max_starting` slots;
//! and fixed 1 s and 5 s polling through the same worker) on the same job
//! stream, and
//! prints peak and waiting RSS, CPU while waiting, polls and calls per job,
//! mean and p95 lag, throughput, and the ratios to the learned schedule.
//! `rate` runs `--workers` processes sharing one account limit, once with
//! their shares coordinated through the fleet stream (`coordinated`) and
//! once each finding its own by 429s (`alone`: no stream), and checks the
//! rate-budget scenario: ≥ 95 % of the ceiling with ≤ 2 % 429s coordinated
//! (issue 25), ≥ 85 % with ≤ 5 % alone (issue 7). `lanes` queues a bulk backlog of
//! `--jobs` long jobs, then publishes `--interactive` short jobs one every
//! few seconds, once with the interactive lane beside the bulk one
//! (`amqp.lanes`) and once with every job on one queue, and prints the
//! interactive jobs' latency side by side. Figures come from /proc (the
//! worker process only) and from the simulator's own counters.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use segmind_sim::{LatencyDist, RateScope, SimConfig, SimHandle};

const API_KEY: &str = "sk-bench-not-a-secret";

struct Args {
    mode: String,
    jobs: usize,
    variants: Vec<String>,
    latency: f64,
    spread: f64,
    per_char: f64,
    workers: usize,
    limit: u32,
    scope: String,
    /// Jobs published per second; 0 = all at once.
    arrival: f64,
    /// `lanes`: parts of each bulk job, interactive jobs.
    parts: usize,
    interactive: usize,
}

fn args() -> Args {
    let cli = common::BenchArgs::from_env();
    let get = |name: &str| cli.get(name);
    let mode = cli.mode("scale");
    let num = |name: &str, default: f64| cli.num(name, default);
    Args {
        jobs: num(
            "--jobs",
            match mode.as_str() {
                "rate" => 60.0,
                "lanes" => 30.0,
                _ => 10_000.0,
            },
        ) as usize,
        variants: get("--variants")
            .unwrap_or_else(|| match mode.as_str() {
                "rate" => "coordinated,alone".into(),
                _ => "learned,finishes,fixed1,fixed5".into(),
            })
            .split(',')
            .map(str::to_owned)
            .collect(),
        latency: num("--latency", if mode == "scale" { 43.5 } else { 5.0 }),
        spread: num("--spread", if mode == "scale" { 8.0 } else { 0.5 }),
        per_char: num("--per-char", 0.0),
        workers: num("--workers", 3.0) as usize,
        limit: num("--limit", if mode == "lanes" { 60.0 } else { 50.0 }) as u32,
        parts: num("--parts", 6.0) as usize,
        interactive: num("--interactive", 10.0) as usize,
        scope: get("--scope").unwrap_or_else(|| "all".into()),
        arrival: num("--arrival", 0.0),
        mode,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args();
    match args.mode.as_str() {
        "scale" => scale(&args).await,
        "rate" => rate(&args).await,
        "lanes" => lanes(&args).await,
        other => bail!("unknown mode {other}: scale, rate or lanes"),
    }
}

/// Figures of one run.
#[derive(Debug, Default, Clone)]
struct Figures {
    completed: usize,
    failed: HashMap<String, usize>,
    peak_rss_mib: f64,
    waiting_rss_mib: f64,
    waiting_cpu_cores: f64,
    polls_per_job: f64,
    calls_per_job: f64,
    mean_lag_s: f64,
    p95_lag_s: f64,
    throughput_per_s: f64,
    /// Jobs a second between the completions of the first and the last
    /// tenth of the jobs: the steady state, without the run's start (the
    /// workers' start) and end (the last jobs' Segmind latency, which no
    /// budget can use).
    steady_per_s: f64,
    seconds: f64,
    rate_limited: u64,
    api_calls: u64,
}

async fn scale(args: &Args) -> anyhow::Result<()> {
    println!(
        "scale: {} jobs published {}, Segmind latency {} ± {} s (normal){}",
        args.jobs,
        if args.arrival > 0.0 {
            format!("at {} a second", args.arrival)
        } else {
            "at once".into()
        },
        args.latency,
        args.spread,
        if args.per_char > 0.0 {
            format!(" + {} s per character", args.per_char)
        } else {
            String::new()
        }
    );
    let mut results = Vec::new();
    for variant in &args.variants {
        let vars: Vec<(&str, String)> = match variant.as_str() {
            "learned" => vec![],
            // Learning each job as it finishes (the releases before), not
            // by cohort.
            "finishes" => vec![("TTS__SEGMIND__POLL_LEARN", "finishes".into())],
            // Every job of the backlog starts at once (no start slots):
            // what `jobs.max_starting` saves, side by side.
            "all-starting" => vec![("TTS__JOBS__MAX_STARTING", args.jobs.max(1).to_string())],
            "fixed1" => vec![("TTS__SEGMIND__POLL_FIXED_INTERVAL", "1".into())],
            "fixed5" => vec![("TTS__SEGMIND__POLL_FIXED_INTERVAL", "5".into())],
            other => bail!("unknown variant {other}"),
        };
        let mut config = SimConfig::fast(API_KEY);
        config.queue_time = Duration::from_millis(1500);
        config.latency_mean = Duration::from_secs_f64(args.latency);
        config.latency_spread = Duration::from_secs_f64(args.spread);
        config.latency_dist = LatencyDist::Normal;
        config.latency_per_char = Duration::from_secs_f64(args.per_char);
        config.espeak = false;
        let mut vars = vars;
        vars.push((
            "TTS__AMQP__MAX_IN_FLIGHT",
            args.jobs.min(65_535).to_string(),
        ));
        vars.push(("TTS__SEGMIND__MAX_POLLS_PER_JOB", "1000".into()));
        let f = run(variant, config, args.jobs, 1, args.arrival, &vars).await?;
        print_figures(variant, &f);
        results.push((variant.clone(), f));
    }
    if let Some((_, base)) = results.iter().find(|(v, _)| v == "learned") {
        println!("\nratios to the learned schedule (other / learned):");
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>12} {:>10}",
            "variant", "polls", "calls", "lag", "polls×lag", "peak RSS"
        );
        for (v, f) in &results {
            println!(
                "{:<10} {:>8.2} {:>8.2} {:>8.2} {:>12.2} {:>10.2}",
                v,
                f.polls_per_job / base.polls_per_job,
                f.calls_per_job / base.calls_per_job,
                f.mean_lag_s / base.mean_lag_s,
                (f.polls_per_job * f.mean_lag_s) / (base.polls_per_job * base.mean_lag_s),
                f.peak_rss_mib / base.peak_rss_mib
            );
        }
    }
    Ok(())
}

async fn rate(args: &Args) -> anyhow::Result<()> {
    let scope = match args.scope.as_str() {
        "submits" => RateScope::Submits,
        _ => RateScope::AllCalls,
    };
    println!(
        "rate: {} workers, account limit {}/min counting {}, {} queued jobs of {} s",
        args.workers, args.limit, args.scope, args.jobs, args.latency
    );
    let mut config = SimConfig::fast(API_KEY);
    config.queue_time = Duration::from_millis(200);
    config.latency_mean = Duration::from_secs_f64(args.latency);
    config.latency_spread = Duration::from_secs_f64(args.spread);
    config.rate_limit_per_minute = Some(args.limit);
    config.rate_limit_scope = scope;
    config.espeak = false;
    let vars = vec![
        (
            "TTS__SEGMIND__RATE_LIMIT_PER_MINUTE",
            args.limit.to_string(),
        ),
        (
            "TTS__SEGMIND__RATE_LIMIT_SCOPE",
            if scope == RateScope::Submits {
                "submits"
            } else {
                "all"
            }
            .into(),
        ),
        ("TTS__SEGMIND__POLL_PRIOR_LATENCY", args.latency.to_string()),
        (
            "TTS__SEGMIND__POLL_PRIOR_SPREAD",
            args.spread.max(0.1).to_string(),
        ),
    ];
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for variant in &args.variants {
        let mut vars = vars.clone();
        let (min_share, max_429) = match variant.as_str() {
            "coordinated" => (0.95, 0.02),
            "alone" => {
                vars.push(("TTS__FLEET__STREAM", String::new()));
                (0.85, 0.05)
            }
            other => bail!("unknown rate variant {other}: coordinated or alone"),
        };
        let f = run(variant, config.clone(), args.jobs, args.workers, 0.0, &vars).await?;
        print_figures(variant, &f);
        let useful_calls = (f.api_calls - f.rate_limited) as f64 / args.jobs as f64;
        let counted_per_job = if scope == RateScope::Submits {
            1.0
        } else {
            useful_calls
        };
        let ceiling_per_min = f64::from(args.limit) / counted_per_job;
        let throughput_per_min = f.throughput_per_s * 60.0;
        let whole_run = throughput_per_min / ceiling_per_min;
        let steady_per_min = f.steady_per_s * 60.0;
        let steady = steady_per_min / ceiling_per_min;
        let share_429 = f.rate_limited as f64 / f.api_calls as f64;
        let rate_limited_failures = f.failed.get("rate_limited").copied().unwrap_or(0);
        println!(
            "{variant}: ceiling {ceiling_per_min:.1} jobs/min ({} / {counted_per_job:.2} counted calls a job); \
             throughput {throughput_per_min:.1} jobs/min = {:.1} % of the ceiling \
             (steady, from the first to the last tenth of the jobs: {steady_per_min:.1} jobs/min = {:.1} %); \
             429 answers: {} of {} calls = {:.1} %; jobs failed as rate_limited: {rate_limited_failures}\n",
            args.limit,
            100.0 * whole_run,
            100.0 * steady,
            f.rate_limited,
            f.api_calls,
            100.0 * share_429
        );
        let pass = f.completed == args.jobs
            && rate_limited_failures == 0
            && share_429 <= max_429
            && whole_run >= min_share;
        if !pass {
            failed.push(format!(
                "{variant} (needs ≥ {:.0} % of the ceiling, ≤ {:.0} % 429s)",
                100.0 * min_share,
                100.0 * max_429
            ));
        }
        results.push((variant.clone(), whole_run, share_429));
    }
    if let [(a, share_a, r_a), (b, share_b, r_b)] = results.as_slice() {
        println!(
            "{a} / {b}: throughput {:.3}×, 429 share {:.1} % against {:.1} %",
            share_a / share_b,
            100.0 * r_a,
            100.0 * r_b
        );
    }
    println!(
        "scenario: {}",
        if failed.is_empty() { "PASS" } else { "FAIL" }
    );
    if !failed.is_empty() {
        bail!("the rate-budget scenario failed: {}", failed.join(", "));
    }
    Ok(())
}

fn print_figures(name: &str, f: &Figures) {
    println!(
        "{name:<8} completed {:>6}  failed {:?}  peak RSS {:>7.1} MiB  waiting RSS {:>7.1} MiB  \
         CPU waiting {:.3} cores  polls/job {:>6.2}  calls/job {:>6.2}  lag mean {:>5.2} s p95 {:>5.2} s  \
         polls×lag {:>6.2}  throughput {:>6.2} jobs/s  ({:.0} s)",
        f.completed,
        f.failed,
        f.peak_rss_mib,
        f.waiting_rss_mib,
        f.waiting_cpu_cores,
        f.polls_per_job,
        f.calls_per_job,
        f.mean_lag_s,
        f.p95_lag_s,
        f.polls_per_job * f.mean_lag_s,
        f.throughput_per_s,
        f.seconds
    );
}

/// Records the peak RSS of `pid` (while jobs are still being published).
fn sample(pid: u32, f: &mut Figures) {
    if let Some((rss, _)) = proc_sample(pid) {
        f.peak_rss_mib = f.peak_rss_mib.max(rss as f64 / 1024.0);
    }
}

/// Reads VmRSS (KiB) and utime+stime (clock ticks) of `pid`.
fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

async fn queue_count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Runs `jobs` jobs through `workers` worker processes; returns the figures.
async fn run(
    name: &str,
    config: SimConfig,
    jobs: usize,
    workers: usize,
    arrival: f64,
    vars: &[(&str, String)],
) -> anyhow::Result<Figures> {
    let sim: SimHandle =
        segmind_sim::spawn(config, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?;
    let env = common::stack_env();
    let amqp_url = common::env_value(&env, "TTS__AMQP__URL");
    let tag = format!("bench-{name}-{}", uuid::Uuid::new_v4().simple());
    let requests = format!("{tag}.requests");
    let events = format!("{tag}.events");
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut base_env = worker_env(env, &sim, &tag);
    base_env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));

    // Queue the jobs before any worker starts (the worker declares the same
    // queue with the same arguments; declare it through a first worker).
    let mut children = Vec::new();
    let spawn = |env: &[(String, String)]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
            .arg("run")
            .env_clear()
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
    };
    let first = spawn(&base_env).context("starting the worker (cargo bench builds it)")?;
    let pid = first.id().context("worker pid")?;
    children.push(first);
    let declared = Instant::now();
    while queue_count(&connection.create_channel().await?, &requests)
        .await
        .is_err()
    {
        if declared.elapsed() > Duration::from_secs(30) {
            bail!("the worker did not declare its queue");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut f = Figures::default();
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    let mut pace =
        (arrival > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / arrival)));
    for i in 0..jobs {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let body = serde_json::json!({
            "job_id": format!("{tag}-{i}"),
            "text": format!("Benchmark job number {i}, read aloud."),
        });
        publisher
            .basic_publish(
                "".into(),
                requests.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body)?,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        if pace.is_some() {
            sample(pid, &mut f);
        }
    }
    publisher.wait_for_confirms().await?;
    for _ in 1..workers {
        children.push(spawn(&base_env)?);
    }

    let ticks_per_s = 100.0; // USER_HZ on Linux
    let mut waiting_from: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    // (jobs ended, when) as the first and the last tenth end.
    let mut first_tenth: Option<(usize, Instant)> = None;
    let mut last_tenth: Option<(usize, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some((rss, ticks)) = proc_sample(pid) {
            let mib = rss as f64 / 1024.0;
            f.peak_rss_mib = f.peak_rss_mib.max(mib);
            let stats = sim.stats();
            let done = queue_count(&channel, &events).await? as usize;
            let all_waiting = stats.submits_accepted as usize >= jobs.min(65_535) && done == 0;
            if workers == 1 && all_waiting {
                let (since, t0) = *waiting_from.get_or_insert((Instant::now(), ticks));
                f.waiting_rss_mib = f.waiting_rss_mib.max(mib);
                let secs = since.elapsed().as_secs_f64();
                if secs > 1.0 {
                    f.waiting_cpu_cores = (ticks - t0) as f64 / ticks_per_s / secs;
                }
            }
        }
        let done = queue_count(&channel, &events).await? as usize;
        if first_tenth.is_none() && done >= jobs.div_ceil(10) {
            first_tenth = Some((done, Instant::now()));
        }
        if last_tenth.is_none() && done >= jobs - jobs / 10 {
            last_tenth = Some((done, Instant::now()));
        }
        if done >= jobs {
            break;
        }
        if Instant::now() > deadline {
            bail!("{done} of {jobs} jobs ended within the hour");
        }
        if children
            .iter_mut()
            .any(|c| c.try_wait().ok().flatten().is_some())
        {
            bail!("a worker exited");
        }
    }
    f.seconds = started.elapsed().as_secs_f64();
    f.throughput_per_s = jobs as f64 / f.seconds;
    if let (Some((n0, t0)), Some((n1, t1))) = (first_tenth, last_tenth)
        && n1 > n0
    {
        f.steady_per_s = (n1 - n0) as f64 / (t1 - t0).as_secs_f64();
    }
    drop(children);

    // Outcomes, from the events.
    loop {
        let Some(m) = channel
            .basic_get(events.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        else {
            break;
        };
        let v: serde_json::Value = serde_json::from_slice(&m.delivery.data)?;
        if v["type"] == "tts.job.completed" {
            f.completed += 1;
        } else {
            let code = v["data"]["error"]["code"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            *f.failed.entry(code).or_default() += 1;
        }
    }
    let stats = sim.stats();
    f.polls_per_job = stats.status_polls as f64 / jobs as f64;
    f.calls_per_job = stats.api_calls as f64 / jobs as f64;
    f.api_calls = stats.api_calls;
    f.rate_limited = stats.rate_limited;
    let mut lags: Vec<f64> = stats
        .requests
        .values()
        .filter_map(|r| r.lag_ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    lags.sort_by(f64::total_cmp);
    if !lags.is_empty() {
        f.mean_lag_s = lags.iter().sum::<f64>() / lags.len() as f64;
        f.p95_lag_s = lags[((lags.len() as f64 * 0.95) as usize).min(lags.len() - 1)];
    }
    delete_run(&channel, &tag, &[]).await;
    Ok(f)
}

/// Interactive latency under a bulk backlog, with lanes and without.
async fn lanes(args: &Args) -> anyhow::Result<()> {
    println!(
        "lanes: {} bulk jobs of {} parts queued, then {} interactive jobs one every 3 s; \
         account limit {}/min (submissions), Segmind {} ± {} s",
        args.jobs, args.parts, args.interactive, args.limit, args.latency, args.spread
    );
    let mut results = Vec::new();
    for with_lanes in [true, false] {
        let latencies = lanes_run(args, with_lanes).await?;
        let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let p95 = sorted
            .get(((sorted.len() as f64 * 0.95) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN);
        let name = if with_lanes { "lanes" } else { "one queue" };
        println!(
            "{name:<10} interactive latency mean {mean:>6.2} s  p95 {p95:>6.2} s  max {:>6.2} s  ({} jobs)",
            sorted.last().copied().unwrap_or(f64::NAN),
            latencies.len()
        );
        results.push((name, mean, p95));
    }
    if let [(_, lanes_mean, lanes_p95), (_, one_mean, one_p95)] = results[..] {
        println!(
            "\nratios (one queue / lanes): mean {:.1}x, p95 {:.1}x",
            one_mean / lanes_mean,
            one_p95 / lanes_p95
        );
    }
    Ok(())
}

/// One side of [`lanes`]: the interactive jobs' latencies, publish to
/// completion event, in seconds.
async fn lanes_run(args: &Args, with_lanes: bool) -> anyhow::Result<Vec<f64>> {
    let mut config = SimConfig::fast(API_KEY);
    config.queue_time = Duration::from_millis(200);
    config.latency_mean = Duration::from_secs_f64(args.latency);
    config.latency_spread = Duration::from_secs_f64(args.spread);
    config.rate_limit_per_minute = Some(args.limit + args.limit / 10);
    config.rate_limit_scope = RateScope::Submits;
    config.espeak = false;
    let sim = segmind_sim::spawn(config, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?;
    let env = common::stack_env();
    let amqp_url = common::env_value(&env, "TTS__AMQP__URL");
    let tag = format!("bench-lanes-{}", uuid::Uuid::new_v4().simple());
    let requests = format!("{tag}.requests");
    let bulk = if with_lanes {
        format!("{tag}.requests.bulk")
    } else {
        requests.clone()
    };
    let events = format!("{tag}.events");
    let mut worker_env = worker_env(env, &sim, &tag);
    worker_env.extend([
        (
            "TTS__SEGMIND__RATE_LIMIT_PER_MINUTE".into(),
            args.limit.to_string(),
        ),
        ("TTS__SEGMIND__RATE_LIMIT_SCOPE".into(), "submits".into()),
        (
            "TTS__SEGMIND__POLL_PRIOR_LATENCY".into(),
            args.latency.to_string(),
        ),
        (
            "TTS__SEGMIND__POLL_PRIOR_SPREAD".into(),
            args.spread.max(0.1).to_string(),
        ),
        ("TTS__LONG_TEXT__PART_CHARS".into(), "200".into()),
    ]);
    if with_lanes {
        worker_env.push(("TTS__AMQP__LANES".into(), format!("{requests}:10,{bulk}:1")));
    }
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tts-worker"))
        .arg("run")
        .env_clear()
        .envs(worker_env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the worker (cargo bench builds it)")?;
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let declared = Instant::now();
    while queue_count(&connection.create_channel().await?, &bulk)
        .await
        .is_err()
    {
        if declared.elapsed() > Duration::from_secs(30) {
            bail!("the worker did not declare its queues");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let publish = |queue: String, body: serde_json::Value| {
        let publisher = publisher.clone();
        async move {
            publisher
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&body)?,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    let paragraph = "The river bends past the old mill, and the light turns gold over the fields. \
                     The miller counts the sacks and the children race the geese to the bank.";
    for i in 0..args.jobs {
        let text = (0..args.parts)
            .map(|p| format!("Chapter {i}, part {p}. {paragraph}"))
            .collect::<Vec<_>>()
            .join("\n\n");
        publish(
            bulk.clone(),
            serde_json::json!({"job_id": format!("bulk-{i}"), "text": text}),
        )
        .await?;
    }
    // Interactive jobs once the backlog is being worked on.
    while sim.stats().submits_accepted < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut published = HashMap::new();
    let mut latencies = Vec::new();
    let mut next = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while latencies.len() < args.interactive {
        if published.len() < args.interactive && Instant::now() >= next {
            let id = format!("interactive-{}", published.len());
            publish(
                requests.clone(),
                serde_json::json!({"job_id": id, "text": "Your order has shipped."}),
            )
            .await?;
            published.insert(id, Instant::now());
            next += Duration::from_secs(3);
        }
        while let Some(m) = channel
            .basic_get(events.as_str().into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let v: serde_json::Value = serde_json::from_slice(&m.delivery.data)?;
            let id = v["data"]["job_id"].as_str().unwrap_or_default();
            if let Some(at) = published.get(id) {
                latencies.push(at.elapsed().as_secs_f64());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} interactive jobs ended",
                latencies.len(),
                args.interactive
            );
        }
        if worker.try_wait()?.is_some() {
            bail!("the worker exited");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(worker);
    delete_run(&channel, &tag, &[&bulk]).await;
    Ok(latencies)
}

/// The worker's environment for a run named by `tag`: the stack's storage
/// and broker, the simulator, and queues, prefix and fleet stream of its own
/// (a variant never starts from what another learned).
fn worker_env(env: Vec<(String, String)>, sim: &SimHandle, tag: &str) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            (!k.starts_with("TTS__") || k.starts_with("TTS__S3__") || k == "TTS__AMQP__URL")
                && !k.starts_with("OTEL_")
                && k != "SEGMIND_API_KEY"
        })
        .collect();
    vars.extend([
        ("SEGMIND_API_KEY".into(), API_KEY.into()),
        // BENCH_WORKER_LOG: the workers' log filter (e.g. to see their
        // rate-budget decisions: `warn,tts_worker::segmind::budget=debug`).
        (
            "RUST_LOG".into(),
            std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        ),
        ("TTS__SEGMIND__BASE_URL".into(), sim.base_url()),
        (
            "TTS__SEGMIND__MEDIA_ALLOW_PRIVATE".into(),
            sim.media_addr.to_string(),
        ),
        (
            "TTS__AMQP__REQUESTS_QUEUE".into(),
            format!("{tag}.requests"),
        ),
        ("TTS__AMQP__EVENTS_EXCHANGE".into(), format!("{tag}.events")),
        ("TTS__AMQP__EVENTS_QUEUE".into(), format!("{tag}.events")),
        ("TTS__AMQP__DEAD_LETTER_QUEUE".into(), format!("{tag}.dead")),
        ("TTS__HTTP__ADDR".into(), "127.0.0.1:0".into()),
        ("TTS__S3__PREFIX".into(), format!("{tag}/")),
        ("TTS__FLEET__STREAM".into(), format!("{tag}.fleet")),
        (
            "TTS__FLEET__CONTROL_EXCHANGE".into(),
            format!("{tag}.control"),
        ),
    ]);
    vars
}

/// Deletes what a run named by `tag` declared (its queues, fleet stream and
/// exchanges), and `extra` queues of its own.
async fn delete_run(channel: &Channel, tag: &str, extra: &[&str]) {
    let own = [".requests", ".events", ".dead", ".fleet"].map(|s| format!("{tag}{s}"));
    for q in own.iter().map(String::as_str).chain(extra.iter().copied()) {
        let _ = channel
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [".events", ".control", ".fleet.usage"] {
        let _ = channel
            .exchange_delete(format!("{tag}{x}").as_str().into(), Default::default())
            .await;
    }
}
