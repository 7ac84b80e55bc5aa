//! The worker, in three layers of its own:
//!
//! - [`pipeline`]: a valid job's work — one engine for every job: a plan of
//!   parts, each resumed or submitted at Segmind, checked and stored, then
//!   delivered — and what a failure means. No AMQP.
//! - [`settle`]: one delivery to its end — decode, [`decide::admit`], run
//!   the pipeline (a long job under its lease), [`decide::conclude`],
//!   publish with confirmation ([`publish`]), then ack, requeue or hand
//!   over ([`process`]).
//! - [`consume`]: the loop of one broker session, bounded and pause-aware
//!   ([`run`]).
//!
//! [`pause`] is the gate that stops consumption on account-level failures.

pub mod consume;
pub mod decide;
pub mod fleet;
pub mod pause;
pub mod pipeline;
mod publish;
pub mod settle;

pub use consume::{Consuming, Stopped, run};
pub use pipeline::{JobEnd, Pipeline};
pub use settle::JobContext;
