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
//! 8. The command line, [`cli`].
//!
//! # Visibility
//!
//! Modules are `pub(crate)` unless the binary, the integration suite
//! (`tests/`) or the benchmarks (`benches/`) reach them: what is `pub` here
//! is that surface, and a module leaves it as soon as nothing outside the
//! crate uses it (the compiler's dead-code check then sees its unused items).

pub(crate) mod align;
pub mod app;
pub mod audio;
pub mod broker;
pub(crate) mod captions;
pub(crate) mod check;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod deliverable;
pub mod failure;
pub(crate) mod http;
pub mod job;
pub mod metrics;
pub(crate) mod pcm;
pub mod plan;
pub(crate) mod quality;
pub mod render;
pub mod segmind;
pub(crate) mod spoken;
pub(crate) mod stitch;
pub mod storage;
pub(crate) mod submit;
pub(crate) mod telemetry;
pub mod wire;
pub mod worker;
