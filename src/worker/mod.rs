//! The worker, in three layers of its own:
//!
//! - [`pipeline`]: a valid job's work — replay, resume or submit at Segmind,
//!   check and store the audio, checkpoint — and what a failure means. No AMQP.
//! - [`settle`]: one delivery to its end — decode, run the pipeline or
//!   reject, publish with confirmation, then ack or requeue ([`process`]).
//! - [`consume`]: the loop of one broker session, bounded and pause-aware
//!   ([`run`]).
//!
//! [`pause`] is the gate that stops consumption on account-level failures.

pub mod consume;
pub mod pause;
pub mod pipeline;
pub mod settle;

pub use consume::{Consuming, Stopped, run};
pub use pipeline::{DeliveryLimit, HandOverReason, JobEnd, JobError, Pipeline};
pub use settle::{JobContext, Settlement, process};
