//! tts-worker: consumes text-to-speech requests from RabbitMQ, runs them on
//! Segmind's Gemini 2.5 Pro TTS (v2 async API), stores the audio in
//! S3-compatible storage and publishes a CloudEvent per job.
//!
//! # Layout
//!
//! - [`app`]: wiring; builds everything from [`config::Settings`] and runs.
//! - [`worker`]: one delivery to one confirmed terminal event ([`worker::process`]), and the bounded loop.
//! - [`checkpoint`]: a job's durable record in the bucket (crash-resume, idempotent replays).
//! - [`pause`]: pausing consumption on account-level failures.
//! - [`wire`]: request JSON and CloudEvents, decoded into / encoded from [`job`] types.
//! - [`job`]: domain types, valid by construction (voices, job ids, keys, outcomes).
//! - [`segmind`]: the API client (submit, poll, result, download).
//! - [`retry`], [`poll`]: the backoff policy and the polling schedule it uses.
//! - [`failure`]: the one place failures are classified into codes and classes.
//! - [`audio`]: sniffing and checking audio bytes.
//! - [`storage`]: S3 uploads.
//! - [`broker`]: RabbitMQ topology and confirmed publishing.
//! - [`metrics`], [`http`], [`telemetry`]: observability.
//! - [`cli`], [`submit`], [`check`]: the command line.
//! - [`simulator`]: a faithful Segmind simulator for tests, the demo and benchmarks.

pub mod app;
pub mod audio;
pub mod broker;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod failure;
pub mod http;
pub mod job;
pub mod metrics;
pub mod pause;
pub mod poll;
pub mod retry;
pub mod segmind;
pub mod simulator;
pub mod storage;
pub mod submit;
pub mod telemetry;
pub mod wire;
pub mod worker;
