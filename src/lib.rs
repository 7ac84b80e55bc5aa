//! tts-worker: consumes text-to-speech requests from RabbitMQ, runs them on
//! Segmind's Gemini 2.5 Pro TTS (v2 async API), stores the audio in
//! S3-compatible storage and publishes a CloudEvent per job.
//!
//! # Layout
//!
//! Modules form nine layers; each imports only from layers below it
//! (checked by `tests/layers.rs`, the table in ARCHITECTURE.md):
//!
//! 0. [`config`], [`metrics`].
//! 1. [`failure`] (the vocabulary of failure and the one classifier),
//!    [`deliverable`] (what a producer wants delivered), [`pcm`] (16-bit
//!    PCM, its WAV container, where its speech is), [`spoken`] (what of a
//!    text is spoken, in which scripts, and how long it takes).
//! 2. Domain values and pure decisions: [`job`], [`audio`], [`plan`]
//!    (cutting texts into parts), [`quality`] (the one gate: is a take as
//!    long as its text?), [`captions`].
//! 3. [`wire`] (the wire formats, converted to domain types at the edge),
//!    [`stitch`], [`align`], [`render`].
//! 4. Adapters: [`segmind`] (the API client), [`storage`] (S3), [`broker`]
//!    (RabbitMQ, and leases on jobs), [`http`] and [`telemetry`].
//! 5. [`checkpoint`] (a job's plan and records in the bucket).
//! 6. The [`worker`]: the one engine, settlement and its pure decisions,
//!    the consume loop, the pause gate.
//! 7. Wiring, [`app`], and the subcommands [`submit`], [`check`].
//! 8. The command line, [`cli`], and the [`testing`] facade.
//!
//! # Visibility
//!
//! Every module is `pub(crate)`. Outside the crate there are two surfaces:
//! the binary's ([`Cli`], [`run`], [`report`]) and [`testing`], the small
//! facade the integration suite (`tests/`) and the benchmarks (`benches/`)
//! import from. An item is re-exported there only when a test needs it, so
//! the compiler's dead-code check sees everything else.

pub(crate) mod align;
pub(crate) mod app;
pub(crate) mod audio;
pub(crate) mod broker;
pub(crate) mod captions;
pub(crate) mod check;
pub(crate) mod checkpoint;
pub(crate) mod cli;
pub(crate) mod config;
pub(crate) mod deliverable;
pub(crate) mod failure;
pub(crate) mod http;
pub(crate) mod job;
pub(crate) mod metrics;
pub(crate) mod pcm;
pub(crate) mod plan;
pub(crate) mod quality;
pub(crate) mod render;
pub(crate) mod segmind;
pub(crate) mod spoken;
pub(crate) mod stitch;
pub(crate) mod storage;
pub(crate) mod submit;
pub(crate) mod telemetry;
pub mod testing;
pub(crate) mod wire;
pub(crate) mod worker;

pub use cli::{Cli, report, run};
