//! The CloudEvents 1.0 the worker publishes (structured JSON mode), encoded
//! from a job's [`Outcome`]; and their decoding, for `tts-worker submit
//! --wait` and tests.

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::TraceHeaders;
use crate::job::{JobId, Outcome, Progress};

/// Routing key (and CloudEvents `type`) of a completion event.
pub const COMPLETED_TYPE: &str = "tts.job.completed";
/// Routing key (and CloudEvents `type`) of a failure event.
pub const FAILED_TYPE: &str = "tts.job.failed";
/// Routing key (and CloudEvents `type`) of a cancelled job's event: a
/// failure event (the same data) whose `error.code` is `cancelled`.
pub const CANCELLED_TYPE: &str = "tts.job.cancelled";
/// `$id` of the cancelled event's schema, and its events' `dataschema`.
pub const CANCELLED_SCHEMA_ID: &str = "urn:tts-worker:schema:tts.job.cancelled:1";
/// Routing key (and CloudEvents `type`) of a progress event.
pub const PROGRESS_TYPE: &str = "tts.job.progress";
/// `$id` of the progress event's schema, and its events' `dataschema`.
pub const PROGRESS_SCHEMA_ID: &str = "urn:tts-worker:schema:tts.job.progress:1";
/// `$id` of the completion event's schema (`contract/schemas/`), and its
/// events' CloudEvents `dataschema`.
pub const COMPLETED_SCHEMA_ID: &str = "urn:tts-worker:schema:tts.job.completed:1";
/// `$id` of the failure event's schema, and its events' `dataschema`.
pub const FAILED_SCHEMA_ID: &str = "urn:tts-worker:schema:tts.job.failed:1";
/// Content type of events: CloudEvents 1.0 structured mode, JSON.
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// A CloudEvents 1.0 envelope in structured JSON mode.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CloudEvent<D> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    /// The `$id` of this event's JSON Schema (`contract/schemas/`), naming
    /// its kind and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// CloudEvents distributed-tracing extension: the job's W3C context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    pub data: D,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AudioData {
    pub bucket: String,
    pub key: String,
    pub uri: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// A long job's timing marks: a JSON object beside the audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marks_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marks_uri: Option<String>,
    /// What was delivered, for a job that asked for a format, rate,
    /// loudness or captions: measured on the delivered file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_peak_db: Option<f64>,
    /// Caption files beside the audio.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captions: Vec<CaptionData>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaptionData {
    /// `vtt` or `srt`.
    pub format: String,
    pub key: String,
    pub uri: String,
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SegmindData {
    /// The request of a one-part job; a long job's first part's.
    pub request_id: String,
    /// Every part's request, in the order of the text.
    #[serde(default)]
    pub request_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_time_seconds: Option<f64>,
    /// Credits the job cost (`metrics.cost` of its results, summed over the
    /// parts), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// HTTP calls to Segmind the completing delivery made (0 when the audio
    /// was served from storage).
    #[serde(default)]
    pub calls: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorData {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

/// `data` of a `tts.job.completed` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompletedData {
    pub job_id: String,
    pub audio: AudioData,
    /// Parts the text was cut into, each one Segmind request (1 for a
    /// short text).
    #[serde(default = "one")]
    pub parts: u32,
    pub segmind: SegmindData,
    pub attempts: u32,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// True when the audio was found in storage and no Segmind call was made
    /// (a repeated or redelivered job).
    #[serde(default)]
    pub served_from_storage: bool,
}

fn one() -> u32 {
    1
}

/// `data` of a `tts.job.failed` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FailedData {
    pub job_id: String,
    pub error: ErrorData,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmind: Option<SegmindRef>,
    pub attempts: u32,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SegmindRef {
    pub request_id: String,
}

/// A running job's progress (`tts.job.progress`): published while a job
/// of several parts runs, at most every `jobs.progress_interval`, only
/// when something changed. Counts never go down within a delivery; a
/// redelivered job starts from what is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgressData {
    /// The producer's job id.
    pub job_id: String,
    /// Parts whose audio is stored.
    pub parts_done: u32,
    /// Parts of the job's plan.
    pub parts_total: u32,
    /// Seconds of speech stored so far.
    pub audio_seconds: f64,
    /// Segmind credits of the stored parts, when Segmind reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<f64>,
    /// The request's metadata, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Either kind of event `data`, for consumers.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Completed(Box<CompletedData>),
    Failed(FailedData),
    Progress(ProgressData),
}

/// Encodes a running job's progress. Its id names the job and the counts,
/// so a copy of one report is dropped by `id` like a terminal event's.
pub fn encode_progress(
    job_id: &JobId,
    progress: &Progress,
    metadata: Option<&Map<String, Value>>,
    source: &str,
    now: DateTime<Utc>,
    trace: &TraceHeaders,
) -> EncodedEvent {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d1e_7a20_93c4_4b8f_a6d2_1e0f_c3b4_8a91);
    let name = format!(
        "progress\0{job_id}\0{}\0{}\0{}",
        progress.parts_done, progress.parts_total, progress.audio_seconds
    );
    let id = uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string();
    let envelope = CloudEvent {
        specversion: "1.0".into(),
        id: id.clone(),
        source: source.into(),
        kind: PROGRESS_TYPE.into(),
        subject: job_id.producer().into(),
        time: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        datacontenttype: "application/json".into(),
        dataschema: Some(PROGRESS_SCHEMA_ID.into()),
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        data: (),
    };
    let data = ProgressData {
        job_id: job_id.producer().to_owned(),
        parts_done: progress.parts_done,
        parts_total: progress.parts_total,
        audio_seconds: (progress.audio_seconds * 1000.0).round() / 1000.0,
        credits: progress.credits,
        metadata: metadata.cloned(),
    };
    EncodedEvent {
        id,
        kind: PROGRESS_TYPE,
        routing_key: match job_id.tenant() {
            Some(tenant) => format!("{PROGRESS_TYPE}.{tenant}"),
            None => PROGRESS_TYPE.to_owned(),
        },
        body: to_json(envelope, data),
    }
}

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub id: String,
    /// The CloudEvents `type` (`tts.job.completed`, `tts.job.failed`).
    pub kind: &'static str,
    /// `tts.job.{completed|failed}`, then `.{tenant}` for a tenant's job.
    pub routing_key: String,
    pub body: Vec<u8>,
}

/// What a key's path may hold as it is in a URI: RFC 3986's unreserved
/// characters and the `/` between segments; everything else (spaces,
/// `#`, `?`, `%`, every non-ASCII byte) is percent-encoded.
const URI_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The `s3://` URI of `key` in `bucket`: the key percent-encoded, so a
/// consumer that parses the URI gets the key back (a bucket name needs no
/// encoding).
fn s3_uri(bucket: &str, key: &str) -> String {
    format!(
        "s3://{bucket}/{}",
        percent_encoding::utf8_percent_encode(key, URI_PATH)
    )
}

/// The CloudEvents `id` of an outcome: the same outcome of the same job always
/// gets the same id, so a consumer that meets an event twice (a redelivered
/// job replays its completion) can drop the copy by `id`.
pub fn event_id(outcome: &Outcome) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2b7c_1d9e_54a3_4f60_8e1b_c0d2_93a4_77f5);
    let name = match outcome {
        Outcome::Completed(c) => format!(
            "completed\0{}\0{}\0{}",
            c.job_id, c.audio.key, c.audio.sha256
        ),
        // Not the Segmind request: a job redelivered mid-failure may fail
        // again on another request, and must still be one event.
        Outcome::Failed(f) => format!("failed\0{}\0{}", f.job_id, f.failure.code.as_str()),
    };
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// Encodes a terminal outcome as a CloudEvent.
pub fn encode_event(
    outcome: &Outcome,
    source: &str,
    now: DateTime<Utc>,
    trace: &TraceHeaders,
) -> EncodedEvent {
    let id = event_id(outcome);
    let envelope = |kind: &'static str, schema: &'static str, subject: &str| CloudEvent {
        specversion: "1.0".into(),
        id: id.clone(),
        source: source.into(),
        kind: kind.into(),
        subject: subject.into(),
        time: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        datacontenttype: "application/json".into(),
        dataschema: Some(schema.into()),
        traceparent: trace.traceparent.clone(),
        tracestate: trace.tracestate.clone(),
        data: (),
    };
    let (routing_key, body) = match outcome {
        Outcome::Completed(c) => {
            let data = CompletedData {
                job_id: c.job_id.producer().to_owned(),
                audio: AudioData {
                    uri: s3_uri(&c.audio.bucket, &c.audio.key),
                    bucket: c.audio.bucket.clone(),
                    key: c.audio.key.clone(),
                    content_type: c.audio.content_type.clone(),
                    size_bytes: c.audio.size_bytes,
                    sha256: c.audio.sha256.clone(),
                    duration_seconds: c.audio.duration_seconds,
                    marks_uri: c.marks_key.as_ref().map(|k| s3_uri(&c.audio.bucket, k)),
                    marks_key: c.marks_key.clone(),
                    format: c.delivery.as_ref().map(|d| d.format.as_str().to_owned()),
                    sample_rate: c.delivery.as_ref().map(|d| d.sample_rate),
                    channels: c.delivery.as_ref().map(|d| d.channels),
                    bitrate_kbps: c.delivery.as_ref().and_then(|d| d.bitrate_kbps),
                    loudness_lufs: c.delivery.as_ref().and_then(|d| d.loudness_lufs),
                    true_peak_db: c.delivery.as_ref().and_then(|d| d.true_peak_db),
                    captions: c
                        .delivery
                        .iter()
                        .flat_map(|d| &d.captions)
                        .map(|cap| CaptionData {
                            format: cap.format.as_str().to_owned(),
                            uri: s3_uri(&c.audio.bucket, &cap.key),
                            key: cap.key.clone(),
                            content_type: cap.format.content_type().to_owned(),
                        })
                        .collect(),
                },
                parts: c.parts,
                segmind: SegmindData {
                    request_id: c.request_ids.first().cloned().unwrap_or_default(),
                    request_ids: c.request_ids.clone(),
                    inference_time_seconds: c.inference_time_seconds,
                    cost: c.segmind_cost,
                    calls: c.segmind_calls,
                },
                attempts: c.attempts,
                metadata: c.metadata.clone(),
                served_from_storage: c.served_from_storage,
            };
            (
                COMPLETED_TYPE,
                to_json(
                    envelope(COMPLETED_TYPE, COMPLETED_SCHEMA_ID, c.job_id.producer()),
                    data,
                ),
            )
        }
        Outcome::Failed(f) => {
            let data = FailedData {
                job_id: f.job_id.producer().to_owned(),
                error: ErrorData {
                    code: f.failure.code.as_str().into(),
                    message: f.failure.short_message().into_owned(),
                    retryable: f.failure.retryable(),
                    http_status: f.failure.http_status,
                },
                segmind: f
                    .request_id
                    .clone()
                    .map(|request_id| SegmindRef { request_id }),
                attempts: f.attempts,
                metadata: f.metadata.clone(),
            };
            // A cancellation is told apart by its type: a consumer binds
            // tts.job.cancelled.# to follow only those.
            let (kind, schema) = if f.failure.code == crate::failure::ErrorCode::Cancelled {
                (CANCELLED_TYPE, CANCELLED_SCHEMA_ID)
            } else {
                (FAILED_TYPE, FAILED_SCHEMA_ID)
            };
            (
                kind,
                to_json(envelope(kind, schema, f.job_id.producer()), data),
            )
        }
    };
    EncodedEvent {
        id,
        kind: routing_key,
        routing_key: match outcome.job_id().tenant() {
            Some(tenant) => format!("{routing_key}.{tenant}"),
            None => routing_key.to_owned(),
        },
        body,
    }
}

impl<D> CloudEvent<D> {
    /// The same envelope around other data.
    fn with_data<E>(self, data: E) -> CloudEvent<E> {
        CloudEvent {
            specversion: self.specversion,
            id: self.id,
            source: self.source,
            kind: self.kind,
            subject: self.subject,
            time: self.time,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            data,
        }
    }
}

fn to_json<D: Serialize>(envelope: CloudEvent<()>, data: D) -> Vec<u8> {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&envelope.with_data(data)).unwrap_or_default()
}

/// Decodes an event published by a worker (for `submit --wait` and tests).
pub fn decode_event(body: &[u8]) -> Result<CloudEvent<EventData>, serde_json::Error> {
    let mut raw: CloudEvent<Value> = serde_json::from_slice(body)?;
    let data = std::mem::take(&mut raw.data);
    let data = match raw.kind.as_str() {
        COMPLETED_TYPE => EventData::Completed(Box::new(serde_json::from_value(data)?)),
        PROGRESS_TYPE => EventData::Progress(serde_json::from_value(data)?),
        _ => EventData::Failed(serde_json::from_value(data)?),
    };
    Ok(raw.with_data(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::Failure;
    use crate::job::{Completed, Failed, JobId, StoredAudio};
    use serde_json::json;

    fn completed() -> Outcome {
        Outcome::Completed(Completed {
            job_id: JobId::parse("j-1", 128).unwrap(),
            audio: StoredAudio {
                bucket: "b".into(),
                key: "tts/j-1.wav".into(),
                content_type: "audio/wav".into(),
                size_bytes: 10,
                sha256: "ab".into(),
                duration_seconds: Some(1.5),
            },
            request_ids: vec!["r-1".into()],
            parts: 1,
            part_objects: Vec::new(),
            marks_key: None,
            delivery: None,
            inference_time_seconds: Some(40.0),
            segmind_cost: Some(0.05),
            segmind_calls: 4,
            attempts: 1,
            metadata: Some(json!({"t": "x"}).as_object().unwrap().clone()),
            served_from_storage: false,
        })
    }

    #[test]
    fn events_carry_the_trace_context_as_the_cloudevents_tracing_extension() {
        let trace = TraceHeaders {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        };
        let v: Value =
            serde_json::from_slice(&encode_event(&completed(), "s", Utc::now(), &trace).body)
                .unwrap();
        assert_eq!(v["traceparent"], trace.traceparent.unwrap().as_str());
        assert_eq!(v["tracestate"], "congo=t61rcWkgMzE");
        let bare: Value = serde_json::from_slice(
            &encode_event(&completed(), "s", Utc::now(), &TraceHeaders::default()).body,
        )
        .unwrap();
        assert!(bare.get("traceparent").is_none(), "{bare}");
    }

    #[test]
    fn completed_events_follow_cloudevents_and_the_documented_data() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = encode_event(
            &completed(),
            "tts-worker/host-1",
            now,
            &TraceHeaders::default(),
        );
        assert_eq!(e.routing_key, "tts.job.completed");
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "tts.job.completed");
        assert_eq!(v["subject"], "j-1");
        assert_eq!(v["id"], e.id.as_str());
        assert_eq!(v["time"], "2026-11-24T10:00:00.000Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["audio"]["uri"], "s3://b/tts/j-1.wav");
        assert_eq!(v["data"]["audio"]["duration_seconds"], 1.5);
        assert_eq!(v["data"]["segmind"]["request_id"], "r-1");
        assert_eq!(v["data"]["segmind"]["inference_time_seconds"], 40.0);
        assert_eq!(v["data"]["segmind"]["cost"], 0.05);
        assert_eq!(v["data"]["segmind"]["calls"], 4);
        assert_eq!(v["data"]["segmind"]["request_ids"], json!(["r-1"]));
        assert_eq!(v["data"]["parts"], 1);
        assert!(v["data"]["audio"].get("marks_key").is_none());
        assert_eq!(v["data"]["metadata"]["t"], "x");
        let back = decode_event(&e.body).unwrap();
        assert!(matches!(back.data, EventData::Completed(c) if c.audio.sha256 == "ab"));
    }

    #[test]
    fn failed_events_carry_code_message_and_retryability() {
        let failed = Outcome::Failed(Failed {
            job_id: JobId::parse("j-2", 128).unwrap(),
            failure: Failure::invalid_request("text: is required"),
            request_id: None,
            attempts: 1,
            metadata: None,
        });
        let e = encode_event(&failed, "s", Utc::now(), &TraceHeaders::default());
        assert_eq!(e.routing_key, "tts.job.failed");
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["data"]["error"]["code"], "invalid_request");
        assert_eq!(v["data"]["error"]["message"], "text: is required");
        assert_eq!(v["data"]["error"]["retryable"], false);
        assert!(v["data"].get("segmind").is_none());
        assert!(v["data"]["error"].get("http_status").is_none());
        let again = encode_event(&failed, "s", Utc::now(), &TraceHeaders::default());
        assert_eq!(
            again.id, e.id,
            "the same outcome keeps its id, so copies can be dropped"
        );
        assert_ne!(
            encode_event(&completed(), "s", Utc::now(), &TraceHeaders::default()).id,
            e.id
        );
    }

    #[test]
    fn event_uris_carry_the_key_percent_encoded() {
        assert_eq!(s3_uri("b", "tts/j-1.wav"), "s3://b/tts/j-1.wav");
        let uri = s3_uri("b", "talks/my talk #1?.wav");
        assert_eq!(uri, "s3://b/talks/my%20talk%20%231%3F.wav");
        assert_eq!(s3_uri("b", "音声/a.wav"), "s3://b/%E9%9F%B3%E5%A3%B0/a.wav");
        // A URI parser gives the key back.
        let parsed = url::Url::parse(&uri).unwrap();
        let path = percent_encoding::percent_decode_str(parsed.path())
            .decode_utf8()
            .unwrap();
        assert_eq!(path, "/talks/my talk #1?.wav");
    }

    #[test]
    fn a_huge_failure_message_leaves_in_a_small_event() {
        let failed = Outcome::Failed(Failed {
            job_id: JobId::parse("j-3", 128).unwrap(),
            failure: Failure::invalid_request("x: is wrong; ".repeat(100_000)),
            request_id: None,
            attempts: 1,
            metadata: None,
        });
        let e = encode_event(&failed, "s", Utc::now(), &TraceHeaders::default());
        assert!(e.body.len() < 4 * 1024, "a {}-byte event", e.body.len());
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        let message = v["data"]["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("x: is wrong; ") && message.ends_with('…'));
    }
}
