//! Integration tests: one binary, real RabbitMQ and Garage (started by
//! `scripts/test.sh`), the Segmind simulator in-process.

mod audio_check;
mod check;
#[path = "../common/mod.rs"]
mod common;
mod contract;
mod corpus;
mod deliverables;
mod examples;
mod failures;
mod fleet;
mod helpers;
mod image;
mod long_text;
mod observability;
mod one_engine;
mod pipeline;
mod progress;
mod recovery;
mod resilience;
#[path = "../common/schemas.rs"]
mod schemas;
mod sharing;
mod spoken;
mod storage;
mod tenants;
mod upstream;
mod versions;
mod worker_pipeline;
