//! The surface the integration suite (`tests/`) and the benchmarks
//! (`benches/`) reach, and nothing more.
//!
//! Every module of the crate is `pub(crate)`; this facade re-exports, under
//! the modules' own names, the items a test drives the worker with (the
//! application, its settings, the broker and storage adapters) or reads its
//! results through (the events, the checkpoint records). An item joins it
//! only when a test or a benchmark needs it, so what a change can break
//! outside the crate is listed here, and the compiler's dead-code check sees
//! every other item. The binary's surface is [`crate::Cli`], [`crate::run`]
//! and [`crate::report`].

/// Wiring: the whole worker in one process.
pub mod app {
    pub use crate::app::Application;
}

/// Audio as served: sniffing, WAV durations, a WAV from PCM.
pub mod audio {
    pub use crate::audio::{Audio, AudioFormat, sniff, wav_duration, wav_from_pcm};
}

/// RabbitMQ: connecting, the topology, publishing, and the headers a test
/// publishes or reads.
pub mod broker {
    pub use crate::broker::{
        COUNTED_DELIVERIES_HEADER, DEFERRED_SINCE_HEADER, EVENTS_BINDINGS, PAUSES_HEADER,
        Publisher, Topology, connect, declare, header_str, queue_depth, with_headers,
    };
}

/// A job's plan and records in the bucket, as a resend or an upgrade finds
/// them.
pub mod checkpoint {
    pub use crate::checkpoint::{
        Checkpoint, Checkpoints, Loaded, PartRecord, PartsCheckpoint, PlanRecord, fingerprint,
    };
}

/// Settings, loaded as the binary loads them.
pub mod config {
    pub use crate::config::{
        AccountPolicy, AmbiguousSubmits, Lane, RateScope, RequestLimits, Settings, TenantIdentity,
    };
}

/// What a producer asks to have delivered.
pub mod deliverable {
    pub use crate::deliverable::{Format, LoudnessTarget};
}

/// The vocabulary of failure.
pub mod failure {
    pub use crate::failure::{Attempt, ErrorCode};
}

/// Jobs and their outcomes.
pub mod job {
    pub use crate::job::{
        Completed, JobId, ObjectKey, Outcome, SpeechRequest, TtsJob, VOICES, Voice,
    };
}

/// The worker's metrics registry.
pub mod metrics {
    pub use crate::metrics::Metrics;
}

/// Cutting a text into parts.
pub mod plan {
    pub use crate::plan::plan;
}

/// Rendering: the encoder pipeline, the loudness meter and the limiter, for
/// the deliverables benchmark.
pub mod render {
    pub use crate::render::{Limiter, Meter, Render, RenderSpec, gain_db};
}

/// The Segmind client.
pub mod segmind {
    pub use crate::segmind::SegmindClient;
}

/// The S3 adapter.
pub mod storage {
    pub use crate::storage::Storage;
}

/// The wire formats: requests as decoded, events as published, and the
/// headers of a dead-lettered copy.
pub mod wire {
    pub use crate::wire::request::RequestError;
    pub use crate::wire::{
        CANCELLED_TYPE, COMPLETED_TYPE, CloudEvent, CompletedData, DEAD_LETTER_CODE_HEADER,
        DEAD_LETTER_JOB_HEADER, DEAD_LETTER_MESSAGE_HEADER, EVENT_CONTENT_TYPE, EventData,
        FAILED_TYPE, FailedData, PROGRESS_TYPE, ProgressData, TRACEPARENT_HEADER,
        TRACESTATE_HEADER, decode_event, decode_request,
    };
}

/// The engine, driven one job at a time.
pub mod worker {
    pub use crate::worker::pause::PauseGate;
    pub use crate::worker::{JobEnd, Pipeline};

    /// The fleet's broker objects, for clean-up.
    pub mod fleet {
        pub use crate::worker::fleet::USAGE_SUFFIX;
    }
}
