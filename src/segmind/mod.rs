//! Client of Segmind's serverless API, v2 async flow, in four parts:
//!
//! - [`client`]: the HTTP flow (submit, poll, result, download) and the
//!   account probe; the only code that holds the API key.
//! - [`protocol`]: what Segmind's answers mean, as pure functions.
//! - [`retry`]: the one retry layer around each call, and the backoff policy.
//! - [`poll`]: when to poll a submitted job (the `PollSchedule` seam and the
//!   learned schedule).
//! - [`budget`]: the account's rate limit, shared by the fleet.
//! - [`media`]: where a result's audio may be fetched from (the API is an
//!   untrusted upstream: https and public addresses only, unless listed).
//!
//! Errors are [`SegmindError`]s, which report facts (an HTTP status on a
//! call, a network error, a FAILED job) for [`crate::failure::classify`].

pub mod budget;
pub mod client;
pub mod error;
pub mod media;
pub mod poll;
pub mod protocol;
pub mod retry;

pub use client::{SegmindClient, Synthesis};
pub use error::SegmindError;
pub use protocol::Submitted;
pub use retry::CallCount;
