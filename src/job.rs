//! Domain types of a TTS job. Values here are valid by construction: wire
//! formats are parsed into them at the edge (`wire`), and the rest of the crate
//! never re-checks them.

use std::fmt;

use serde_json::{Map, Value};

use crate::deliverable::{CaptionFormat, Deliverable, Format};

/// The 30 Gemini TTS voices, in Google's exact spelling.
pub const VOICES: [&str; 30] = [
    "Zephyr",
    "Puck",
    "Charon",
    "Kore",
    "Fenrir",
    "Leda",
    "Orus",
    "Aoede",
    "Callirrhoe",
    "Autonoe",
    "Enceladus",
    "Iapetus",
    "Umbriel",
    "Algieba",
    "Despina",
    "Erinome",
    "Algenib",
    "Rasalgethi",
    "Laomedeia",
    "Achernar",
    "Alnilam",
    "Schedar",
    "Gacrux",
    "Pulcherrima",
    "Achird",
    "Zubenelgenubi",
    "Vindemiatrix",
    "Sadachbia",
    "Sadaltager",
    "Sulafat",
];

/// Misspellings seen in the wild, with the voice they mean.
const MISSPELLINGS: [(&str, &str); 2] = [("callirhoe", "Callirrhoe"), ("sulafar", "Sulafat")];

pub const DEFAULT_VOICE: Voice = Voice(3); // Kore
pub const DEFAULT_TEMPERATURE: f64 = 0.4;
pub const TEMPERATURE_RANGE: std::ops::RangeInclusive<f64> = 0.0..=2.0;

/// One of [`VOICES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voice(usize);

impl Voice {
    /// Accepts any letter case; rejects misspellings with a hint.
    pub fn parse(input: &str) -> Result<Self, String> {
        let wanted = input.trim();
        if let Some(i) = VOICES.iter().position(|v| v.eq_ignore_ascii_case(wanted)) {
            return Ok(Voice(i));
        }
        let lower = wanted.to_ascii_lowercase();
        match MISSPELLINGS.iter().find(|(typo, _)| *typo == lower) {
            Some((_, meant)) => Err(format!(
                "unknown voice {wanted:?} (did you mean {meant:?}?)"
            )),
            None => Err(format!(
                "unknown voice {wanted:?}; expected one of the 30 Gemini voices, e.g. Kore, Puck, Charon"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        VOICES[self.0]
    }
}

impl fmt::Display for Voice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A producer isolated from the others (`tenants.identity = "user_id"`):
/// the broker-validated `user_id` of its requests. 1 to 64 ASCII letters,
/// digits, '_' or '-', starting with a letter or digit, so it is one
/// segment of an S3 key (never the worker's own `_` objects) and one word of
/// a routing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(String);

/// Most characters of a tenant's name.
pub const MAX_TENANT_CHARS: usize = 64;

impl Tenant {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.is_empty() || input.len() > MAX_TENANT_CHARS {
            return Err(format!("must be 1 to {MAX_TENANT_CHARS} characters long"));
        }
        if let Some(bad) = input
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        {
            return Err(format!(
                "contains {bad:?}; a tenant is named by ASCII letters, digits, '_' and '-'"
            ));
        }
        // `_` leads the worker's own objects ({prefix}_parts/ …).
        if !input.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err("must start with a letter or a digit".into());
        }
        Ok(Tenant(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job identifier: 1..=max ASCII letters, digits, '.', '_' or '-', not
/// starting with '.', so it is safe in an S3 key, a log line and a header.
///
/// With tenants, a job is known by its tenant and the producer's id: its
/// key ([`JobId::as_str`], and `Display`) is `{tenant}/{id}`, and every
/// record, part, default key, lease and in-process turn is named by it, so
/// one tenant's `job_id` never reaches another's. Events name the
/// producer's id ([`JobId::producer`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId {
    key: String,
    /// Where the producer's id starts in `key` (0 without a tenant).
    producer_at: usize,
}

impl JobId {
    pub fn parse(input: &str, max_len: usize) -> Result<Self, String> {
        if input.is_empty() || input.len() > max_len {
            return Err(format!("must be 1 to {max_len} characters long"));
        }
        if input.starts_with('.') {
            return Err("must not start with '.'".into());
        }
        if let Some(bad) = input
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "contains {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
            ));
        }
        Ok(JobId::plain(input.to_owned()))
    }

    fn plain(key: String) -> Self {
        JobId {
            key,
            producer_at: 0,
        }
    }

    /// This job as `tenant`'s: its key becomes `{tenant}/{id}`.
    pub fn within(self, tenant: &Tenant) -> Self {
        let producer = &self.key[self.producer_at..];
        JobId {
            key: format!("{tenant}/{producer}"),
            producer_at: tenant.as_str().len() + 1,
        }
    }

    /// The id the producer gave (or was derived for it), without tenant.
    pub fn producer(&self) -> &str {
        &self.key[self.producer_at..]
    }

    /// The job's tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        (self.producer_at > 0).then(|| &self.key[..self.producer_at - 1])
    }

    /// A stable id derived from the message bytes, so a redelivery of the same
    /// body keeps its id.
    pub fn derive_from_body(body: &[u8]) -> Self {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x5f1e_8d2c_7a41_4b8e_9c3d_2e6f_a1b0_c9d8);
        JobId::plain(uuid::Uuid::new_v5(&NAMESPACE, body).to_string())
    }

    /// The job's key: `{tenant}/{id}` with a tenant, else the id.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// Characters a key must not hold: Unicode format characters (soft hyphen,
/// zero-width spaces and joiners, bidi embeddings, overrides and isolates,
/// word joiners and invisible operators, the byte-order mark) and the line
/// and paragraph separators. Each is invisible or reorders what is shown.
pub fn invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x061C
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
    )
}

/// A relative S3 key: no leading '/', no '.' or '..' segment, no empty or
/// blank segment, no control characters, no invisible or bidi characters
/// ([`invisible`]: a key that reads as another in a console or a listing),
/// at most `max_len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn parse(input: &str, max_len: usize) -> Result<Self, String> {
        if input.is_empty() || input.len() > max_len {
            return Err(format!("must be 1 to {max_len} bytes long"));
        }
        if input.starts_with('/') {
            return Err("must be relative (no leading '/')".into());
        }
        if input.chars().any(|c| c.is_control() || c == '\\') {
            return Err("must not contain control characters or '\\'".into());
        }
        if let Some(c) = input.chars().find(|c| invisible(*c)) {
            return Err(format!(
                "must not contain invisible, bidi or line-separator characters (U+{:04X})",
                u32::from(c)
            ));
        }
        if input
            .split('/')
            .any(|seg| seg.trim().is_empty() || seg == "." || seg == "..")
        {
            return Err("must not contain empty, blank, '.' or '..' path segments".into());
        }
        Ok(ObjectKey(input.to_owned()))
    }

    /// The default key of a job: `{prefix}{job_id}.{ext}`. A prefix is
    /// validated at start-up and a job id is a safe single segment.
    pub fn default_for(prefix: &str, job_id: &JobId, extension: &str) -> Self {
        ObjectKey(format!("{prefix}{job_id}.{extension}"))
    }

    /// The key of an object derived from this one (marks, captions): its
    /// full key and `suffix` (`talk.mp3` → `talk.mp3.vtt`), so two formats
    /// of one name never share a derived object.
    pub fn derived(&self, suffix: &str) -> ObjectKey {
        ObjectKey(format!("{}{suffix}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job's audio may be stored. Producer keys (`output_key`) are
/// stored under `output_prefix`; no producer key may reach the worker's own
/// area, `s3.prefix`, which holds the default keys of other jobs and the
/// worker's objects (`{prefix}_checkpoints/`). With an empty `s3.prefix` the
/// reserved area is `_` (the worker's objects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// `s3.prefix`: default keys are `{prefix}{job_id}.{ext}`.
    pub prefix: String,
    /// `s3.output_prefix`.
    pub output_prefix: String,
}

/// An `output_key` that would reach the worker's own objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "output_key {key:?} would be stored at {resolved:?}, in the worker's own area ({internal:?}*: default keys of jobs and the worker's checkpoints); choose another key"
)]
pub struct ForbiddenKey {
    pub key: String,
    pub resolved: String,
    pub internal: String,
}

impl KeyPolicy {
    /// The area no producer key may reach: `s3.prefix` (default keys and
    /// the worker's own objects), or `_` when that prefix is empty.
    pub fn internal_prefix(&self) -> String {
        if self.prefix.is_empty() {
            "_".to_owned()
        } else {
            self.prefix.clone()
        }
    }

    /// The key a job's audio goes to: the producer's key under
    /// `output_prefix` (and the job's tenant), else the default
    /// `{prefix}{job_id}.{extension}` (with a tenant,
    /// `{prefix}{tenant}/{id}.{extension}`).
    pub fn key_for(&self, job: &TtsJob, extension: &str) -> Result<ObjectKey, ForbiddenKey> {
        match &job.output_key {
            Some(key) => self.resolve(key, job.id.tenant()),
            None => Ok(ObjectKey::default_for(&self.prefix, &job.id, extension)),
        }
    }

    /// A producer's key as stored (`{output_prefix}{tenant}/{key}` for a
    /// tenant's), or why it is refused.
    pub fn resolve(
        &self,
        key: &ObjectKey,
        tenant: Option<&str>,
    ) -> Result<ObjectKey, ForbiddenKey> {
        let resolved = match tenant {
            Some(tenant) => format!("{}{tenant}/{}", self.output_prefix, key.as_str()),
            None => format!("{}{}", self.output_prefix, key.as_str()),
        };
        let internal = self.internal_prefix();
        if resolved.starts_with(&internal) {
            return Err(ForbiddenKey {
                key: key.as_str().to_owned(),
                resolved,
                internal,
            });
        }
        Ok(ObjectKey(resolved))
    }
}

/// What the model is asked to say.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRequest {
    /// Shared: the plan's parts are slices of it (held once, whatever the
    /// number of parts).
    pub text: std::sync::Arc<str>,
    pub voice_1: Voice,
    pub voice_2: Option<Voice>,
    pub temperature: f64,
    /// A style instruction put in front of the text ("Say cheerfully").
    pub style: Option<String>,
}

impl SpeechRequest {
    /// What is sent to the model: `"{style}: {text}"`, or the text alone.
    pub fn prompt(&self) -> std::borrow::Cow<'_, str> {
        match &self.style {
            Some(style) => format!("{style}: {}", self.text).into(),
            None => (*self.text).into(),
        }
    }
}

/// A validated TTS request.
#[derive(Debug, Clone, PartialEq)]
pub struct TtsJob {
    pub id: JobId,
    pub speech: SpeechRequest,
    /// Overrides the default storage key.
    pub output_key: Option<ObjectKey>,
    /// Opaque producer data echoed in events.
    pub metadata: Option<Map<String, Value>>,
    /// The format, rate, loudness and captions asked for.
    pub deliverable: Deliverable,
    /// How its submissions are shared: its lane and its party.
    pub flow: Flow,
}

/// How far a job of several parts has come, for its progress events.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Parts whose audio is stored.
    pub parts_done: u32,
    pub parts_total: u32,
    /// Seconds of speech stored so far.
    pub audio_seconds: f64,
    /// Segmind credits of the stored parts, when Segmind said.
    pub credits: Option<f64>,
}

/// Who a job's submissions are scheduled as (`segmind::budget`): the lane
/// it arrived on (an index into `amqp.lanes`) and the party it is shared as
/// within that lane: its tenant, else its `metadata.tenant`, else `""`, one
/// party for everybody.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    pub lane: usize,
    pub party: std::sync::Arc<str>,
    /// The job's key (`JobId::as_str`), for the gate that may withhold its
    /// submissions (a cancellation names it).
    pub job: std::sync::Arc<str>,
}

impl Flow {
    /// The flow of a job that arrived on `lane`: its `tenant` when known,
    /// else the `metadata.tenant` string a producer set (not vouched for:
    /// it only shares slots fairly between cooperating producers).
    pub fn of(
        lane: usize,
        job: &JobId,
        tenant: Option<&Tenant>,
        metadata: Option<&Map<String, Value>>,
    ) -> Self {
        let party = match tenant {
            Some(t) => t.as_str(),
            None => metadata
                .and_then(|m| m.get("tenant"))
                .and_then(Value::as_str)
                .filter(|t| Tenant::parse(t).is_ok())
                .unwrap_or(""),
        };
        Flow {
            lane,
            party: std::sync::Arc::from(party),
            job: std::sync::Arc::from(job.as_str()),
        }
    }
}

/// Where audio was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAudio {
    pub bucket: String,
    pub key: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub duration_seconds: Option<f64>,
}

/// What was delivered, as measured on the delivered file (a rendered
/// deliverable; a passthrough job's audio is Segmind's, unmeasured).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub format: Format,
    pub sample_rate: u32,
    pub channels: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// Integrated loudness (LUFS); none for audio too short or silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_peak_db: Option<f64>,
    /// Caption files beside the audio.
    #[serde(default)]
    pub captions: Vec<Caption>,
}

/// A caption file beside the audio.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caption {
    pub format: CaptionFormat,
    pub key: String,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub job_id: JobId,
    pub audio: StoredAudio,
    /// Every part's Segmind request, in the order of the text.
    pub request_ids: Vec<String>,
    /// Parts the text was cut into (1 for a short text), a part cut at
    /// Gemini's output cap counted as its pieces: one per request.
    pub parts: u32,
    /// The intermediate objects its parts were stored as (deleted once the
    /// delivery is acked); never in an event.
    pub part_objects: Vec<String>,
    /// A long job's timing marks, beside the audio (`{key}.marks.json`).
    pub marks_key: Option<String>,
    /// What a rendered deliverable's audio is (format, rate, loudness,
    /// captions); `None` for Segmind's audio delivered as served.
    /// Boxed: most completions are passthrough and carry none.
    pub delivery: Option<Box<Delivery>>,
    pub inference_time_seconds: Option<f64>,
    /// Credits Segmind reported for the job (`metrics.cost`, summed over
    /// the parts), when known.
    pub segmind_cost: Option<f64>,
    /// HTTP calls to Segmind this delivery made (retries included).
    pub segmind_calls: u32,
    pub attempts: u32,
    pub metadata: Option<Map<String, Value>>,
    /// True when the audio was already stored and no Segmind call was made.
    pub served_from_storage: bool,
}

/// A job that ended in failure; `code` and `retryable` come from
/// [`crate::failure`].
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub job_id: JobId,
    pub failure: crate::failure::Failure,
    pub request_id: Option<String>,
    pub attempts: u32,
    pub metadata: Option<Map<String, Value>>,
}

/// The terminal state of a job, published as one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Completed),
    Failed(Failed),
}

impl Outcome {
    pub fn job_id(&self) -> &JobId {
        match self {
            Outcome::Completed(c) => &c.job_id,
            Outcome::Failed(f) => &f.job_id,
        }
    }

    /// A low-cardinality label for metrics: "completed" or the error code.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed(_) => "completed",
            Outcome::Failed(f) => f.failure.code.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    fn policy(prefix: &str, output_prefix: &str) -> KeyPolicy {
        KeyPolicy {
            prefix: prefix.into(),
            output_prefix: output_prefix.into(),
        }
    }

    fn key(k: &str) -> ObjectKey {
        ObjectKey::parse(k, 512).unwrap()
    }

    #[test]
    fn producer_keys_never_reach_the_workers_own_objects() {
        let open = policy("tts/", "");
        assert_eq!(
            open.resolve(&key("orders/1234.wav"), None)
                .unwrap()
                .as_str(),
            "orders/1234.wav",
            "the README's example keeps working"
        );
        for bad in [
            "tts/_checkpoints/other.json",
            "tts/_checkpoints/x",
            "tts/_parts/a",
            "tts/another-job.wav",
        ] {
            let err = open.resolve(&key(bad), None).unwrap_err();
            assert_eq!(err.internal, "tts/", "{bad}");
        }
        assert!(open.resolve(&key("ttsx/job-1.wav"), None).is_ok());
        // Locked down: everything goes under the output prefix.
        let locked = policy("tts/", "producers/");
        assert_eq!(
            locked
                .resolve(&key("tts/_checkpoints/x.json"), None)
                .unwrap()
                .as_str(),
            "producers/tts/_checkpoints/x.json"
        );
        // With no prefix, only the worker's `_` objects are reserved.
        let bare = policy("", "");
        assert!(bare.resolve(&key("_checkpoints/j.json"), None).is_err());
        assert!(bare.resolve(&key("a.wav"), None).is_ok());
    }

    use super::*;

    #[test]
    fn a_tenants_job_is_keyed_in_its_namespace_and_events_keep_the_producers_id() {
        let alice = Tenant::parse("alice").unwrap();
        let bob = Tenant::parse("bob").unwrap();
        let id = JobId::parse("orders-1", 64).unwrap();
        assert_eq!(id.tenant(), None);
        assert_eq!(id.producer(), "orders-1");
        let a = id.clone().within(&alice);
        let b = id.within(&bob);
        assert_ne!(a, b);
        assert_eq!(
            (a.as_str(), a.producer(), a.tenant()),
            ("alice/orders-1", "orders-1", Some("alice"))
        );
        let keys = policy("tts/", "out/");
        assert_eq!(
            ObjectKey::default_for("tts/", &b, "wav").as_str(),
            "tts/bob/orders-1.wav"
        );
        let k = key("orders/1234.wav");
        assert_eq!(
            keys.resolve(&k, a.tenant()).unwrap().as_str(),
            "out/alice/orders/1234.wav"
        );
        assert_eq!(
            keys.resolve(&k, b.tenant()).unwrap().as_str(),
            "out/bob/orders/1234.wav"
        );
        for bad in [
            "",
            "a.b",
            "a/b",
            "ali ce",
            "é",
            "_parts",
            "-x",
            &"x".repeat(65),
        ] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Tenant::parse("svc_orders-2").is_ok());
    }

    #[test]
    fn voices_accept_any_case_and_return_canonical_spelling() {
        assert_eq!(Voice::parse("kore").unwrap().name(), "Kore");
        assert_eq!(
            Voice::parse("ZUBENELGENUBI").unwrap().name(),
            "Zubenelgenubi"
        );
        assert_eq!(DEFAULT_VOICE.name(), "Kore");
        for v in VOICES {
            assert_eq!(Voice::parse(v).unwrap().name(), v);
        }
    }

    #[test]
    fn known_misspellings_get_a_hint() {
        let err = Voice::parse("Sulafar").unwrap_err();
        assert!(err.contains("Sulafat"), "{err}");
        let err = Voice::parse("Callirhoe").unwrap_err();
        assert!(err.contains("Callirrhoe"), "{err}");
        assert!(Voice::parse("Alexa").is_err());
    }

    #[test]
    fn job_ids_are_restricted_to_a_safe_set() {
        assert!(JobId::parse("order-42_v1.2", 128).is_ok());
        for bad in ["", "../etc", ".hidden", "a/b", "a b", "a\nb", "é"] {
            assert!(JobId::parse(bad, 128).is_err(), "{bad:?}");
        }
        assert!(JobId::parse(&"x".repeat(129), 128).is_err());
    }

    #[test]
    fn derived_job_ids_are_deterministic_and_safe() {
        let a = JobId::derive_from_body(b"{\"text\":\"hi\"}");
        let b = JobId::derive_from_body(b"{\"text\":\"hi\"}");
        let c = JobId::derive_from_body(b"{\"text\":\"ho\"}");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(JobId::parse(a.as_str(), 128).is_ok());
    }

    #[test]
    fn object_keys_reject_traversal_and_absolute_paths() {
        assert!(ObjectKey::parse("audio/2026/job.wav", 512).is_ok());
        for bad in [
            "", "/abs", "a/../b", "..", "a//b", "./a", "a/", "a\u{0}b", "a\\b",
        ] {
            assert!(ObjectKey::parse(bad, 512).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::parse(&"k".repeat(513), 512).is_err());
    }

    #[test]
    fn object_keys_are_plain_no_blank_segment_nor_invisible_character() {
        // What reads as another key, or as nothing, in a console.
        for bad in [
            " ",
            "a/ /b.wav",
            "a/\u{3000}/b.wav",
            "invoice\u{202E}vaw.exe",
            "a\u{200B}b.wav",
            "a\u{2028}b.wav",
            "\u{FEFF}a.wav",
            "a\u{00AD}b.wav",
        ] {
            assert!(ObjectKey::parse(bad, 512).is_err(), "{bad:?}");
        }
        let err = ObjectKey::parse("invoice\u{202E}vaw.exe", 512).unwrap_err();
        assert!(err.contains("U+202E"), "{err}");
        // Spaces inside a segment, and other scripts, are plain.
        for good in ["my talk.wav", "日本語/音声.wav", "a b/c d.mp3"] {
            assert!(ObjectKey::parse(good, 512).is_ok(), "{good:?}");
        }
    }
}
