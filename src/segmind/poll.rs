//! When to poll a submitted job's status URL.
//!
//! [`PollSchedule`] is the seam; [`AdaptivePoll`] is the worker's schedule and
//! [`FixedPoll`] the SDK's fixed cadence (kept for comparison).
//!
//! # The polling model
//!
//! A poll costs a paid, rate-limited call; a poll too late costs lag. For a
//! job of latency T with survival S(t) = P(T > t) and density f(t), a job
//! still pending at t is polled at rate 1/δ(t), so
//! `E[polls] = ∫ S/δ dt` and `E[lag] ≈ ∫ f·δ/2 dt`. Minimising
//! `E[polls] + λ·E[lag]` pointwise gives `δ(t) = c·sqrt(S(t)/f(t))`: wait long
//! while completion is unlikely (small hazard f/S), poll densely where it is
//! likely. [`AdaptivePoll`] estimates f and S online (a kernel density over a
//! window of recent latencies, seeded by a prior), and picks `c` by bisection
//! so the expected lag equals `poll_target_lag`.
//!
//! Latency that text length predicts is taken out first: the model regresses
//! latency on the text's characters over the window and learns the
//! distribution of the residual; a job's plan is shifted by its prediction.
//! The window is short (128 samples, taken at most one per mean latency /
//! 128 seconds, so it spans about one mean latency of finishes whether jobs
//! arrive steadily or all at once), so a shift of Segmind's speed is learned
//! within about a hundred completions.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::config::PollSettings;

/// What a schedule knows about one job when asked for the next wait.
#[derive(Debug, Clone, Copy)]
pub struct PollContext {
    /// Polls already made for this job (in this delivery).
    pub polls_done: u32,
    /// Time since the job was submitted (or resumed with its submit time).
    pub since_submit: Duration,
    /// Length of the job's text, in characters.
    pub text_chars: usize,
}

/// A finished job's latency, as well as it is known.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub text_chars: usize,
    /// Submit to completion. Segmind's own `metrics.total_time` (or
    /// `queue_time + inference_time`) when reported, else the midpoint of the
    /// last pending poll and the poll that saw the job done.
    pub latency: Duration,
    /// When the job was seen done, on any monotonic clock the caller keeps
    /// (time since the client started, say).
    pub finished_at: Duration,
}

/// Decides the wait before the next status poll.
pub trait PollSchedule: Send + Sync + std::fmt::Debug {
    /// The wait before the next poll of the job described by `ctx`.
    fn next_delay(&self, ctx: &PollContext) -> Duration;
    /// Learns from a finished job. Fixed schedules ignore it.
    fn observe(&self, _observation: &Observation) {}
    /// What it has learned, as (text characters, latency seconds) samples,
    /// once it learned from at least `min_learned` jobs of its own; `None`
    /// before (or for a fixed schedule).
    fn snapshot(&self, _min_learned: u64) -> Option<Vec<(f64, f64)>> {
        None
    }
    /// Starts from another replica's `samples` instead of the prior, while
    /// it has learned from fewer than `below` jobs of its own (a new
    /// replica of a warm fleet); whether it took them.
    fn seed(&self, _samples: &[(f64, f64)], _below: u64) -> bool {
        false
    }
}

/// The schedule the settings ask for.
pub fn from_settings(settings: &PollSettings) -> Arc<dyn PollSchedule> {
    match settings.fixed_interval {
        Some(interval) => Arc::new(FixedPoll { interval }),
        None => Arc::new(AdaptivePoll::new(settings)),
    }
}

/// Polls every `interval`, like the official SDK (1 s).
#[derive(Debug, Clone, Copy)]
pub struct FixedPoll {
    pub interval: Duration,
}

impl PollSchedule for FixedPoll {
    fn next_delay(&self, _ctx: &PollContext) -> Duration {
        self.interval
    }
}

/// Recent latencies kept for the model.
const WINDOW: usize = 128;
/// Pseudo-observations drawn from the prior when the process starts.
const PRIOR_SAMPLES: usize = 16;
/// Most samples held for their cohort (a backlog of thousands finishing).
const MAX_HELD: usize = 4 * WINDOW;
/// The plan is rebuilt after this many new observations.
const REBUILD_EVERY: u32 = 4;
/// Polls are planned until the survival falls below this.
const TAIL: f64 = 1e-3;
/// Kernel bandwidth as a multiple of σ·n^(-1/5). Silverman's 1.06 widens a
/// 64-sample estimate by ~10 %, and every poll is planned on that width;
/// half of it follows the data more closely.
const BANDWIDTH: f64 = 0.5;
/// Grid points of the density estimate.
const GRID: usize = 1200;

/// Learns the latency distribution and polls where completion is likely.
#[derive(Debug)]
pub struct AdaptivePoll {
    /// Hold each sample until its cohort has finished (see `observe`).
    cohorts: bool,
    target_lag: f64,
    max_interval: f64,
    min_interval: f64,
    model: Mutex<Model>,
}

#[derive(Debug)]
struct Model {
    /// (text characters, latency seconds), oldest first.
    samples: VecDeque<(f64, f64)>,
    since_rebuild: u32,
    /// When the last sample was taken into the window.
    last_taken: Option<f64>,
    /// Jobs of its own learned from.
    learned: u64,
    /// Samples waiting for their cohort: (when they may enter, text
    /// characters, latency).
    held: Vec<(f64, f64, f64)>,
    /// How long after its submission a sample waits for its cohort: the
    /// window's 90th percentile of latency.
    hold_for: f64,
    plan: Arc<Plan>,
}

impl Model {
    /// Takes a sample into the window at `at`; whether the plan is due to
    /// be rebuilt. The window must span the distribution, not the last
    /// second: when many jobs were submitted together they finish in
    /// latency order, and the last 128 would all share one latency.
    /// Samples are taken at most one per (mean latency / window) seconds,
    /// so the window covers about one mean latency of finishes.
    fn take(&mut self, at: f64, chars: f64, latency: f64) -> bool {
        let n = self.samples.len().max(1) as f64;
        let mean = self.samples.iter().map(|s| s.1).sum::<f64>() / n;
        let spacing = mean / WINDOW as f64;
        if self.last_taken.is_some_and(|last| at - last < spacing) {
            return false;
        }
        self.last_taken = Some(at);
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back((chars, latency));
        self.learned += 1;
        self.since_rebuild += 1;
        self.since_rebuild >= REBUILD_EVERY
    }
}

/// Poll offsets for the current model: absolute time since submit of a job
/// is `intercept + slope * chars + offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    intercept: f64,
    slope: f64,
    /// Sorted offsets relative to the predicted latency.
    offsets: Vec<f64>,
}

impl AdaptivePoll {
    pub fn new(settings: &PollSettings) -> Self {
        let mean = settings.prior_latency.as_secs_f64();
        let spread = settings.prior_spread.as_secs_f64();
        // The prior as evenly spaced quantiles of a normal distribution.
        let samples: VecDeque<(f64, f64)> = (0..PRIOR_SAMPLES)
            .map(|i| {
                let p = (i as f64 + 0.5) / PRIOR_SAMPLES as f64;
                (0.0, (mean + spread * normal_quantile(p)).max(0.0))
            })
            .collect();
        let target_lag = settings.target_lag.as_secs_f64();
        let min_interval = (target_lag / 4.0).max(0.01);
        let plan = Arc::new(build_plan(&samples, target_lag, min_interval));
        let hold_for = quantile(&samples, 0.9);
        AdaptivePoll {
            cohorts: settings.learn_cohorts,
            target_lag,
            max_interval: settings.max_interval.as_secs_f64(),
            min_interval,
            model: Mutex::new(Model {
                samples,
                since_rebuild: 0,
                last_taken: None,
                learned: 0,
                held: Vec::new(),
                hold_for,
                plan,
            }),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        // The model is plain data; a panic elsewhere cannot leave it torn.
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current plan (for tests and the benchmark's report).
    pub fn plan(&self) -> Arc<Plan> {
        self.model().plan.clone()
    }
}

impl PollSchedule for AdaptivePoll {
    fn next_delay(&self, ctx: &PollContext) -> Duration {
        let plan = self.plan();
        let now = ctx.since_submit.as_secs_f64();
        let base = plan.intercept + plan.slope * ctx.text_chars as f64;
        let next = plan
            .offsets
            .iter()
            .map(|o| base + o)
            .find(|t| *t > now + self.min_interval * 0.5);
        let wait = match next {
            Some(t) => t - now,
            // Slower than anything learned: poll at the last planned interval,
            // growing by half each time, up to poll_max.
            None => {
                let last = plan
                    .offsets
                    .windows(2)
                    .last()
                    .map_or(self.target_lag * 2.0, |w| w[1] - w[0]);
                let beyond = plan.offsets.last().map_or(0.0, |o| now - (base + o));
                (last + beyond * 0.5).clamp(self.min_interval, self.max_interval)
            }
        };
        Duration::from_secs_f64(wait.max(self.min_interval))
    }

    /// Learns from a finished job. With cohorts, its latency waits until
    /// its submission is older than the longest latency the plan expects
    /// for its text: by then every job submitted with it has finished or is
    /// slower than planned, so samples enter in submission order, not in
    /// finishing order. Learning each job as it finishes takes a backlog's
    /// fast early finishers first, a sample biased short (the slow ones of
    /// the same cohort are still pending): the plan then polls too early
    /// for the jobs still waiting, which costs polls.
    fn observe(&self, observation: &Observation) {
        let latency = observation.latency.as_secs_f64();
        if !latency.is_finite() {
            return;
        }
        let now = observation.finished_at.as_secs_f64();
        let chars = observation.text_chars as f64;
        let samples = {
            let mut model = self.model();
            let mut due = false;
            if self.cohorts {
                let submitted = now - latency;
                let release = submitted + model.hold_for.max(latency);
                model.held.push((release, chars, latency));
                if model.held.len() > MAX_HELD {
                    // A backlog far larger than the window: keep the
                    // earliest cohorts.
                    model.held.sort_by(|a, b| a.0.total_cmp(&b.0));
                    model.held.truncate(MAX_HELD);
                }
                let mut ready: Vec<(f64, f64, f64)> = Vec::new();
                model.held.retain(|h| {
                    if h.0 <= now {
                        ready.push(*h);
                        false
                    } else {
                        true
                    }
                });
                ready.sort_by(|a, b| a.0.total_cmp(&b.0));
                for (at, chars, latency) in ready {
                    due |= model.take(at, chars, latency);
                }
            } else {
                due = model.take(now, chars, latency);
            }
            if !due {
                return;
            }
            model.since_rebuild = 0;
            model.hold_for = quantile(&model.samples, 0.9);
            model.samples.clone()
        };
        // Built without the lock: polls keep reading the previous plan.
        let plan = Arc::new(build_plan(&samples, self.target_lag, self.min_interval));
        self.model().plan = plan;
    }

    fn snapshot(&self, min_learned: u64) -> Option<Vec<(f64, f64)>> {
        let model = self.model();
        (model.learned >= min_learned).then(|| model.samples.iter().copied().collect())
    }

    fn seed(&self, samples: &[(f64, f64)], below: u64) -> bool {
        let mut samples: VecDeque<(f64, f64)> = samples
            .iter()
            .copied()
            .filter(|(chars, latency)| {
                chars.is_finite() && *chars >= 0.0 && latency.is_finite() && *latency >= 0.0
            })
            .collect();
        while samples.len() > WINDOW {
            samples.pop_front();
        }
        if samples.len() < PRIOR_SAMPLES {
            return false;
        }
        let plan = Arc::new(build_plan(&samples, self.target_lag, self.min_interval));
        let mut model = self.model();
        if model.learned >= below {
            return false;
        }
        model.samples = samples;
        model.hold_for = quantile(&model.samples, 0.9);
        model.since_rebuild = 0;
        model.plan = plan;
        true
    }
}

/// The `q` quantile of the samples' latencies (0 without samples).
fn quantile(samples: &VecDeque<(f64, f64)>, q: f64) -> f64 {
    let mut latencies: Vec<f64> = samples.iter().map(|s| s.1).collect();
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_by(f64::total_cmp);
    let i = ((latencies.len() - 1) as f64 * q).round() as usize;
    latencies[i.min(latencies.len() - 1)]
}

/// Fits latency on text length, then plans polls on the residuals.
fn build_plan(samples: &VecDeque<(f64, f64)>, target_lag: f64, min_interval: f64) -> Plan {
    let (intercept, slope) = fit_length(samples);
    let residuals: Vec<f64> = samples
        .iter()
        .map(|(chars, t)| t - (intercept + slope * chars))
        .collect();
    let offsets = plan_offsets(&residuals, target_lag, min_interval);
    Plan {
        intercept,
        slope,
        offsets,
    }
}

/// Least squares of latency on text length, used only when length explains a
/// fair share (R² ≥ 0.3) of the variance; otherwise the mean.
fn fit_length(samples: &VecDeque<(f64, f64)>) -> (f64, f64) {
    let n = samples.len() as f64;
    if n < 2.0 {
        return (0.0, 0.0);
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    let syy: f64 = samples.iter().map(|s| (s.1 - my).powi(2)).sum();
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    if sxx <= f64::EPSILON || syy <= f64::EPSILON {
        return (0.0, 0.0);
    }
    let slope = sxy / sxx;
    let r2 = sxy * sxy / (sxx * syy);
    if slope <= 0.0 || r2 < 0.3 {
        return (0.0, 0.0);
    }
    (my - slope * mx, slope)
}

/// Kernel density estimate of `samples` on a grid.
struct Density {
    start: f64,
    step: f64,
    /// Probability mass of each grid cell.
    mass: Vec<f64>,
    /// P(T > t) at each grid point.
    survival: Vec<f64>,
}

fn density(samples: &[f64], min_bandwidth: f64) -> Option<Density> {
    let n = samples.len();
    if n == 0 {
        return None;
    }
    let mean = samples.iter().sum::<f64>() / n as f64;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64;
    let h = (BANDWIDTH * var.sqrt() * (n as f64).powf(-0.2)).max(min_bandwidth);
    let lo = samples.iter().cloned().fold(f64::INFINITY, f64::min) - 4.0 * h;
    let hi = samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max) + 4.0 * h;
    let step = (hi - lo) / GRID as f64;
    let mut mass = vec![0.0; GRID];
    for (i, m) in mass.iter_mut().enumerate() {
        let t = lo + (i as f64 + 0.5) * step;
        *m = samples
            .iter()
            .map(|s| (-0.5 * ((t - s) / h).powi(2)).exp())
            .sum::<f64>();
    }
    let total: f64 = mass.iter().sum();
    if total <= 0.0 {
        return None;
    }
    mass.iter_mut().for_each(|m| *m /= total);
    let mut survival = vec![0.0; GRID + 1];
    for i in (0..GRID).rev() {
        survival[i] = survival[i + 1] + mass[i];
    }
    Some(Density {
        start: lo,
        step,
        mass,
        survival,
    })
}

impl Density {
    fn time(&self, i: usize) -> f64 {
        self.start + i as f64 * self.step
    }

    /// Poll times for scale `c`: from each poll, the next is the first grid
    /// point t where the wait reaches `c * sqrt(S(t)/f(t))`.
    fn polls(&self, c: f64, min_interval: f64) -> Vec<f64> {
        let mut polls = Vec::new();
        // Nothing finishes before the grid starts: count waits from there.
        let mut last = self.start;
        for i in 0..GRID {
            if self.survival[i] < TAIL {
                break;
            }
            let t = self.time(i + 1);
            let f = self.mass[i] / self.step;
            let wanted = if f > 0.0 {
                c * (self.survival[i + 1].max(TAIL) / f).sqrt()
            } else {
                f64::INFINITY
            };
            if t - last >= wanted.max(min_interval) {
                polls.push(t);
                last = t;
            }
        }
        polls.push(self.time(GRID).max(last + min_interval));
        polls
    }

    /// Expected lag of jobs polled at `polls` (sorted).
    fn expected_lag(&self, polls: &[f64]) -> f64 {
        let mut lag = 0.0;
        let mut p = 0;
        for i in 0..GRID {
            let t = self.start + (i as f64 + 0.5) * self.step;
            while p < polls.len() && polls[p] < t {
                p += 1;
            }
            let next = polls.get(p).copied().unwrap_or(t);
            lag += self.mass[i] * (next - t);
        }
        lag
    }
}

/// Poll offsets whose expected lag on `samples` is `target_lag`.
fn plan_offsets(samples: &[f64], target_lag: f64, min_interval: f64) -> Vec<f64> {
    let Some(d) = density(samples, (target_lag / 2.0).max(0.005)) else {
        return Vec::new();
    };
    // Bisect log(c): the lag grows with c.
    let (mut lo, mut hi) = (1e-4f64.ln(), 1e3f64.ln());
    let mut best = d.polls(hi.exp(), min_interval);
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        let polls = d.polls(mid.exp(), min_interval);
        if d.expected_lag(&polls) > target_lag {
            hi = mid;
        } else {
            lo = mid;
            best = polls;
        }
    }
    best
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1e-8
/// after one step; plenty for seeding a prior).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests;
