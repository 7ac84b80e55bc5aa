//! A submitted job: the model's parameter rules, the markers in its text,
//! its state machine (`SimJob::state(now)` and `expired(now, retention)` are
//! pure) and the audio it serves.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::{LatencyDist, SimConfig};
use crate::model;
use crate::voices::is_voice;

pub(crate) enum Fate {
    Complete,
    Fail(String),
    Empty,
    /// Success with only the first word of audio (Gemini's silent truncation).
    Truncated,
}

pub(crate) struct SimJob {
    pub(crate) text: String,
    /// With the realistic model: how long the audio is.
    pub(crate) audio_seconds: Option<AudioLength>,
    /// Fixes the rhythm of the realistic model's speech (from the text, so
    /// the same text sounds the same).
    pub(crate) seed: u64,
    /// Every status poll answers this (`[[sim:status-fault=N]]`).
    pub(crate) status_fault: Option<u16>,
    pub(crate) two_speakers: bool,
    pub(crate) created: Instant,
    pub(crate) queue_until: Instant,
    pub(crate) done_at: Instant,
    pub(crate) fate: Fate,
}

impl SimJob {
    /// What a status poll at `now` reports. Pure, so the timing rules are
    /// tested without a clock.
    pub(crate) fn state(&self, now: Instant) -> &'static str {
        if now < self.queue_until {
            "QUEUED"
        } else if now < self.done_at {
            "PROCESSING"
        } else if matches!(self.fate, Fate::Fail(_)) {
            "FAILED"
        } else {
            "COMPLETED"
        }
    }

    /// Whether the result is gone at `now`: it is kept `retention` after the
    /// job finished (Segmind: 1 hour), then its id answers 404.
    pub(crate) fn expired(&self, now: Instant, retention: Duration) -> bool {
        now >= self.done_at + retention
    }
}

/// The realistic model's audio length for a job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AudioLength {
    /// Seconds the whole text takes to say.
    pub(crate) spoken: f64,
    /// Seconds served: `spoken`, or less when cut at the cap or by a
    /// truncation fault.
    pub(crate) served: f64,
}

/// The model's parameter rules; `Err` is the 400 message.
pub(crate) fn validate(
    body: &Bytes,
    headers: &HeaderMap,
) -> Result<Submission, (StatusCode, String)> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    if !is_json {
        return Err((
            StatusCode::NOT_ACCEPTABLE,
            "Content-Type must be application/json".into(),
        ));
    }
    let bad = |m: &str| Err((StatusCode::BAD_REQUEST, m.to_owned()));
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return bad("Request body must be a JSON object");
    };
    let text = match obj.get("text") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        _ => return bad("'text' is required and must be a non-empty string"),
    };
    match obj.get("temperature") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) => {}
        _ => return bad("'temperature' must be a number between 0 and 2"),
    }
    match obj.get("voice_1") {
        None => {}
        Some(Value::String(v)) if is_voice(v) => {}
        _ => return bad("'voice_1' must be one of the supported voices"),
    }
    let two_speakers = match obj.get("voice_2") {
        None | Some(Value::Null) => false,
        Some(Value::String(v)) if is_voice(v) => true,
        _ => return bad("'voice_2' must be null or one of the supported voices"),
    };
    let voice = obj
        .get("voice_1")
        .and_then(Value::as_str)
        .unwrap_or("Kore")
        .to_owned();
    Ok(Submission {
        text,
        two_speakers,
        voice,
    })
}

/// What a valid submission asks for.
pub(crate) struct Submission {
    pub(crate) text: String,
    pub(crate) two_speakers: bool,
    pub(crate) voice: String,
}

/// The status every poll of a job with `[[sim:status-fault=N]]` answers.
pub(crate) fn marker_status_fault(text: &str) -> Option<u16> {
    let start = text.find("[[sim:status-fault=")? + "[[sim:status-fault=".len();
    let end = text[start..].find("]]")? + start;
    text[start..end].parse().ok()
}

/// The share of the audio a `[[sim:truncate=F]]` job keeps.
pub(crate) fn marker_truncate(text: &str) -> Option<f64> {
    let start = text.find("[[sim:truncate=")? + "[[sim:truncate=".len();
    let end = text[start..].find("]]")? + start;
    text[start..end].parse().ok()
}

pub(crate) fn marker_latency(text: &str) -> Option<Duration> {
    let start = text.find("[[sim:latency=")? + "[[sim:latency=".len();
    let end = text[start..].find("]]")? + start;
    text[start..end]
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

pub(crate) fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("[[sim:") {
        out.push_str(&rest[..i]);
        match rest[i..].find("]]") {
            Some(j) => rest = &rest[i + j + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

pub(crate) fn first_word(text: &str) -> String {
    text.split_whitespace().next().unwrap_or("").to_owned()
}

pub(crate) fn new_job(
    config: &SimConfig,
    submission: Submission,
    first_of_its_text: bool,
) -> SimJob {
    let Submission {
        text,
        two_speakers,
        voice,
    } = submission;
    let now = Instant::now();
    let latency = marker_latency(&text).unwrap_or_else(|| {
        let mean = config.latency_mean.as_secs_f64()
            + config.latency_per_char.as_secs_f64() * strip_markers(&text).chars().count() as f64;
        let spread = config.latency_spread.as_secs_f64();
        let mut rng = rand::rng();
        let noise = match config.latency_dist {
            LatencyDist::Uniform if spread > 0.0 => rng.random_range(-spread..=spread),
            LatencyDist::Normal => {
                // Box–Muller.
                let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                spread * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
            LatencyDist::Uniform => 0.0,
        };
        Duration::from_secs_f64((mean + noise).max(0.05))
    });
    let fate = if text.contains("[[sim:rai]]") {
        Fate::Fail(
            "Content blocked: the input was flagged by RAI safety filters (PROHIBITED_CONTENT)"
                .into(),
        )
    } else if text.contains("[[sim:fail]]")
        || (text.contains("[[sim:fail-once]]") && first_of_its_text)
    {
        Fate::Fail(
            "Inference failed: the model returned no candidates (finishReason: OTHER)".into(),
        )
    } else if text.contains("[[sim:empty]]") {
        Fate::Empty
    } else if text.contains("[[sim:truncated]]")
        || (text.contains("[[sim:truncated-once]]") && first_of_its_text)
    {
        Fate::Truncated
    } else {
        Fate::Complete
    };
    let queue_until = now + config.queue_time.min(latency);
    let spoken = strip_markers(&text);
    let audio_seconds = match config.speech {
        model::SpeechModel::Words => None,
        model::SpeechModel::Realistic { cap } => {
            let kept = marker_truncate(&text).unwrap_or_else(|| {
                let mut rng = rand::rng();
                if config.truncation_rate > 0.0 && rng.random_bool(config.truncation_rate.min(1.0))
                {
                    rng.random_range(0.13..=0.46)
                } else {
                    1.0
                }
            });
            let whole = model::speech_seconds(&crate::speech::said(&spoken, two_speakers), &voice)
                / config.pace.clamp(0.1, 4.0);
            Some(AudioLength {
                spoken: whole,
                served: model::audio_seconds(whole, cap, kept),
            })
        }
    };
    SimJob {
        status_fault: marker_status_fault(&text),
        audio_seconds,
        seed: crate::speech::seed_of(&spoken),
        text: spoken,
        two_speakers,
        created: now,
        queue_until,
        done_at: now + latency,
        fate,
    }
}

/// What a finished job's audio is made of.
pub(crate) enum Sound {
    Silent,
    Text {
        text: String,
        two_speakers: bool,
    },
    /// The realistic model: the text spoken over `spoken` seconds, served
    /// up to `served`.
    Speech {
        text: String,
        spoken: f64,
        served: f64,
        two_speakers: bool,
        seed: u64,
    },
}

impl SimJob {
    /// The audio a COMPLETED job serves.
    pub(crate) fn sound(&self) -> Sound {
        match (&self.fate, self.audio_seconds) {
            (Fate::Empty | Fate::Fail(_), _) => Sound::Silent,
            (Fate::Truncated, None) => Sound::Text {
                text: first_word(&self.text),
                two_speakers: false,
            },
            (Fate::Truncated, Some(length)) => Sound::Speech {
                text: self.text.clone(),
                spoken: length.spoken,
                served: length.served * 0.3,
                two_speakers: self.two_speakers,
                seed: self.seed,
            },
            (Fate::Complete, None) => Sound::Text {
                text: self.text.clone(),
                two_speakers: self.two_speakers,
            },
            (Fate::Complete, Some(length)) => Sound::Speech {
                text: self.text.clone(),
                spoken: length.spoken,
                served: length.served,
                two_speakers: self.two_speakers,
                seed: self.seed,
            },
        }
    }

    /// Where each sentence is in the audio this job serves: `None` unless
    /// the realistic model speaks it (the word model and espeak have no
    /// sentence timing); no sentences for a failed or empty job.
    pub(crate) fn truth(&self) -> Option<crate::speech::Truth> {
        self.audio_seconds?;
        Some(match self.sound() {
            Sound::Speech {
                text,
                spoken,
                served,
                two_speakers,
                seed,
            } => crate::speech::truth(&text, spoken, served, two_speakers, seed),
            Sound::Silent | Sound::Text { .. } => crate::speech::Truth::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_at(created: Instant, queued: u64, latency: u64, fate: Fate) -> SimJob {
        SimJob {
            text: "t".into(),
            audio_seconds: None,
            seed: 0,
            status_fault: None,
            two_speakers: false,
            created,
            queue_until: created + Duration::from_millis(queued),
            done_at: created + Duration::from_millis(latency),
            fate,
        }
    }

    #[test]
    fn a_job_is_queued_then_processing_then_terminal() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let ok = job_at(t0, 100, 1_000, Fate::Complete);
        assert_eq!(ok.state(t0), "QUEUED");
        assert_eq!(ok.state(ms(99)), "QUEUED");
        assert_eq!(ok.state(ms(100)), "PROCESSING");
        assert_eq!(ok.state(ms(999)), "PROCESSING");
        assert_eq!(ok.state(ms(1_000)), "COMPLETED");
        let failed = job_at(t0, 100, 1_000, Fate::Fail("x".into()));
        assert_eq!(failed.state(ms(500)), "PROCESSING");
        assert_eq!(failed.state(ms(1_000)), "FAILED");
    }

    #[test]
    fn results_expire_exactly_one_retention_after_the_job_finished() {
        let t0 = Instant::now();
        let job = job_at(t0, 10, 50, Fate::Complete);
        let hour = Duration::from_secs(3600);
        assert!(!job.expired(t0 + Duration::from_millis(50), hour));
        assert!(!job.expired(t0 + Duration::from_millis(49) + hour, hour));
        assert!(job.expired(t0 + Duration::from_millis(50) + hour, hour));
        // Zero retention: gone the moment it is done.
        assert!(job.expired(t0 + Duration::from_millis(50), Duration::ZERO));
        assert!(!job.expired(t0 + Duration::from_millis(49), Duration::ZERO));
    }

    #[test]
    fn markers_are_stripped_and_parsed() {
        assert_eq!(strip_markers("Hi [[sim:rai]]there"), "Hi there");
        assert_eq!(
            marker_latency("x [[sim:latency=2.5]]"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(marker_latency("x"), None);
        assert_eq!(marker_status_fault("x [[sim:status-fault=502]]"), Some(502));
        assert_eq!(marker_status_fault("x"), None);
        assert_eq!(marker_truncate("x [[sim:truncate=0.25]]"), Some(0.25));
        assert_eq!(strip_markers("x [[sim:truncate=0.25]]"), "x ");
    }
}
