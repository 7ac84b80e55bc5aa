//! tts-worker: consumes text-to-speech requests from RabbitMQ, runs them on
//! Segmind's Gemini 2.5 Pro TTS (v2 async API), stores the audio in
//! S3-compatible storage and publishes a CloudEvent per job.
//!
//! # Layout
//!
//! Modules form layers; each imports only from layers below it (checked by
//! `tests/layers.rs`, stated in ARCHITECTURE.md):
//!
//! 1. Configuration and domain values: [`config`], [`failure`] (the
//!    vocabulary of failure and the one classifier), [`job`], [`audio`],
//!    [`plan`] (cutting long texts into parts), [`quality`] (is a part's
//!    audio as long as its text?), [`metrics`]; the wire
//!    formats, [`wire`].
//! 2. Adapters: [`segmind`] (the API client), [`storage`] (S3), [`broker`]
//!    (RabbitMQ), [`http`] and [`telemetry`] (observability); above storage,
//!    [`checkpoint`] (a job's durable record in the bucket).
//! 3. The [`worker`]: pipeline, settlement, consume loop, pause gate.
//! 4. Wiring, [`app`], and the command line: [`cli`], [`submit`], [`check`].

pub mod align;
pub mod app;
pub mod audio;
pub mod broker;
pub mod captions;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod deliverable;
pub mod failure;
pub mod http;
pub mod job;
pub mod metrics;
pub mod plan;
pub mod quality;
pub mod render;
pub mod segmind;
pub mod stitch;
pub mod storage;
pub mod submit;
pub mod telemetry;
pub mod wire;
pub mod worker;
