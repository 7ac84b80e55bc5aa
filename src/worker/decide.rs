//! What settling a delivery means, decided without a broker: [`admit`]
//! (before any work: poison, reject, hand back, expire or run) and
//! [`conclude`] (after it: what to publish, how to settle, what to clean
//! up). `settle` only carries the decisions out. Pure: table-tested here.

use std::time::Duration;

use super::pipeline::{HandOverReason, JobEnd};
use crate::config::{JobSettings, TenantIdentity};
use crate::failure::{Attempt, ErrorCode, Failure};
use crate::job::{JobId, Outcome, Tenant, TtsJob};
use crate::wire::request::RequestError;

/// How a delivery was settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Terminal event confirmed; the delivery is done.
    Ack,
    /// Not finished here; the broker redelivers it.
    Requeue,
    /// Not finished here through no fault of the job (shutdown, account
    /// pause, its lifetime): a copy goes back to the queue without counting
    /// this delivery (see `settle::hand_over`).
    HandOver(HandOverReason),
}

/// What the broker says of a delivery, and the time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryFacts {
    /// Its delivery number and the pauses it caused.
    pub attempt: Attempt,
    /// When its hand-backs for a newer replica began (`tts-deferred-since`,
    /// ms since the epoch).
    pub deferred_since: Option<u64>,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
}

/// What to do with a delivery before any work.
#[derive(Debug, PartialEq)]
pub enum Admission<'a> {
    /// Delivered more often than `jobs.max_deliveries`: it crashed or
    /// stalled workers. Dead-lettered with a failure event.
    Poison(Failure),
    /// The request breaks the format's rules: dead-lettered with a failure
    /// event.
    Reject(Failure),
    /// A request version this replica does not know, within
    /// `jobs.unsupported_version_grace`: held for `hold` (then jittered),
    /// then handed back uncounted for a newer replica.
    HandBack { hold: Duration },
    /// Past the grace, no replica took it: dead-lettered with a failure event.
    Expire(Failure),
    /// A valid job: run it.
    Run(&'a TtsJob),
}

/// Decides what a delivery with `facts` and the decoded `request` is.
pub fn admit<'a>(
    facts: &DeliveryFacts,
    request: &'a Result<TtsJob, RequestError>,
    jobs: &JobSettings,
) -> Admission<'a> {
    let attempt = facts.attempt.number;
    if attempt > jobs.max_deliveries {
        return Admission::Poison(Failure::poison(attempt, jobs.max_deliveries));
    }
    match request {
        Ok(job) => Admission::Run(job),
        Err(RequestError::Invalid(invalid)) => {
            Admission::Reject(Failure::invalid_request(invalid.to_string()))
        }
        Err(RequestError::NewerVersion { version, known }) => {
            let waited = deferred_for(facts.deferred_since, facts.now_ms);
            if waited < jobs.unsupported_version_grace {
                Admission::HandBack {
                    hold: handback_hold(jobs.version_handback_delay, waited),
                }
            } else {
                Admission::Expire(Failure::unsupported_version(*version, *known, waited))
            }
        }
    }
}

/// The tenant a request belongs to: none without tenants; with
/// `tenants.identity = "user_id"`, its broker-validated `user_id`, which it
/// must carry and which must name a tenant.
pub fn tenant_of(
    identity: TenantIdentity,
    user_id: Option<&str>,
) -> Result<Option<Tenant>, Failure> {
    match (identity, user_id) {
        (TenantIdentity::None, _) => Ok(None),
        (TenantIdentity::UserId, None) => Err(Failure::invalid_request(
            "the request has no user_id property: with tenants.identity = \"user_id\" every request must carry its \
             producer's user_id (RabbitMQ checks it against the connection's user)",
        )),
        (TenantIdentity::UserId, Some(user)) => Tenant::parse(user).map(Some).map_err(|rule| {
            Failure::invalid_request(format!("user_id cannot name a tenant: it {rule}"))
        }),
    }
}

/// How a delivery ended, as settlement sees it.
#[derive(Debug)]
pub enum Ending {
    /// Refused by [`admit`] (poison, invalid, expired): its failure event,
    /// with the original bytes dead-lettered.
    Refused(Box<Outcome>),
    /// Handed back by [`admit`] before running.
    HandedBack(HandOverReason),
    /// The job ran (`valid`: a request that decoded).
    Ran(JobEnd),
}

/// What settlement carries out.
#[derive(Debug, PartialEq)]
pub struct Conclusion {
    /// The terminal event to publish, and whether the original goes to the
    /// dead-letter queue with it. The settlement below holds only once they
    /// are confirmed; otherwise the delivery is requeued (`publish_failed`).
    pub event: Option<(Outcome, bool)>,
    pub settlement: Settlement,
    /// What to delete once the delivery is acked.
    pub cleanup: Option<Cleanup>,
    /// Why the delivery is requeued (`tts_requeues_total{reason}`).
    pub requeue_reason: Option<ErrorCode>,
}

/// Decides how a delivery that ended so is settled.
pub fn conclude(ending: Ending) -> Conclusion {
    let settle = |settlement| Conclusion {
        event: None,
        settlement,
        cleanup: None,
        requeue_reason: None,
    };
    match ending {
        Ending::Refused(outcome) => Conclusion {
            event: Some((*outcome, true)),
            settlement: Settlement::Ack,
            cleanup: None,
            requeue_reason: None,
        },
        Ending::HandedBack(reason) | Ending::Ran(JobEnd::HandOver(reason)) => {
            settle(Settlement::HandOver(reason))
        }
        Ending::Ran(JobEnd::Requeue(code)) => Conclusion {
            requeue_reason: Some(code),
            ..settle(Settlement::Requeue)
        },
        Ending::Ran(JobEnd::Finished(outcome)) => Conclusion {
            cleanup: cleanup_after(&outcome),
            event: Some((*outcome, false)),
            settlement: Settlement::Ack,
            requeue_reason: None,
        },
    }
}

/// What a settled job leaves to delete once its delivery is acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// A completed job's intermediate part objects (the keys its records
    /// name) and what an earlier release stored for its `parts` parts.
    Intermediates {
        job_id: JobId,
        objects: Vec<String>,
        parts: usize,
    },
}

/// What to delete once a finished job's delivery is acked.
///
/// A failed job keeps its stored parts and records: a resend within
/// `jobs.resume_window` pays only for the parts not stored (a part whose
/// request's result is final was already forgotten by the engine). What it
/// leaves is swept by the worker once the window has passed.
pub fn cleanup_after(outcome: &Outcome) -> Option<Cleanup> {
    match outcome {
        // Every job whose parts were stored apart from its delivered audio
        // (several parts, or one part rendered).
        Outcome::Completed(c) if c.parts > 1 || c.delivery.is_some() => {
            Some(Cleanup::Intermediates {
                job_id: c.job_id.clone(),
                objects: c.part_objects.clone(),
                parts: c.parts as usize,
            })
        }
        _ => None,
    }
}

/// When a request's hand-backs for a newer replica began: its
/// `tts-deferred-since` (ms since the epoch), else now; a date in the future
/// (another replica's clock, or a producer's header) is now too, so it can
/// never keep the request from failing.
pub fn deferral_start(since: Option<u64>, now: u64) -> u64 {
    since.filter(|since| *since <= now).unwrap_or(now)
}

/// How long a request has been handed back for a newer replica (see
/// [`deferral_start`]).
pub fn deferred_for(since: Option<u64>, now: u64) -> Duration {
    Duration::from_millis(now - deferral_start(since, now))
}

/// How long to hold a newer-version request before handing it back: the
/// configured delay, growing to an eighth of the time it has been handed
/// back, at most 30 s, so a request no replica takes costs tens of
/// republishes over the grace, not hundreds.
pub fn handback_hold(delay: Duration, waited: Duration) -> Duration {
    delay.max((waited / 8).min(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::failure::Class;
    use crate::job::{Completed, Failed, StoredAudio};
    use crate::wire;

    fn jobs() -> JobSettings {
        Settings::load_from(None, &[]).unwrap().jobs
    }

    fn facts(number: u32, deferred_since: Option<u64>, now_ms: u64) -> DeliveryFacts {
        DeliveryFacts {
            attempt: Attempt { number, pauses: 0 },
            deferred_since,
            now_ms,
        }
    }

    fn decode(body: &str) -> Result<TtsJob, RequestError> {
        wire::decode_request(body.as_bytes(), None, &Default::default()).job
    }

    #[test]
    fn every_admission() {
        let jobs = jobs();
        let valid = decode(r#"{"text":"hello"}"#);
        let invalid = decode(r#"{"text":""}"#);
        let newer = decode(r#"{"version":99,"text":"from the future"}"#);
        let grace = jobs.unsupported_version_grace.as_millis() as u64;
        let now = 10 * grace;
        let max = jobs.max_deliveries;
        // (facts, request, what it is)
        let cases: [(DeliveryFacts, &Result<TtsJob, RequestError>, &str); 8] = [
            (facts(1, None, now), &valid, "run"),
            (facts(max, None, now), &valid, "run"),
            (facts(max + 1, None, now), &valid, "poison"),
            // A poison message is dead-lettered whatever it holds.
            (facts(max + 1, None, now), &invalid, "poison"),
            (facts(1, None, now), &invalid, "reject"),
            (facts(1, None, now), &newer, "hand back"),
            (facts(1, Some(now - grace + 1), now), &newer, "hand back"),
            (facts(1, Some(now - grace), now), &newer, "expire"),
        ];
        for (facts, request, expected) in cases {
            let got = match admit(&facts, request, &jobs) {
                Admission::Run(_) => "run",
                Admission::Poison(f) => {
                    assert_eq!(f.code, ErrorCode::PoisonMessage);
                    "poison"
                }
                Admission::Reject(f) => {
                    assert_eq!(f.code, ErrorCode::InvalidRequest);
                    assert!(f.message.contains("text"), "{}", f.message);
                    "reject"
                }
                Admission::HandBack { hold } => {
                    assert!(hold >= jobs.version_handback_delay);
                    "hand back"
                }
                Admission::Expire(f) => {
                    assert_eq!(f.code, ErrorCode::UnsupportedVersion);
                    "expire"
                }
            };
            assert_eq!(got, expected, "{facts:?}");
        }
        // A deferral dated in the future counts from now: handed back.
        assert!(matches!(
            admit(&facts(1, Some(now + grace), now), &newer, &jobs),
            Admission::HandBack { .. }
        ));
    }

    fn completed(parts: u32, rendered: bool) -> Outcome {
        Outcome::Completed(Completed {
            job_id: JobId::parse("j-1", 64).unwrap(),
            audio: StoredAudio {
                bucket: "b".into(),
                key: "k.wav".into(),
                content_type: "audio/wav".into(),
                size_bytes: 1,
                sha256: "00".into(),
                duration_seconds: None,
            },
            request_ids: vec!["r".into(); parts as usize],
            parts,
            part_objects: (0..parts)
                .map(|i| format!("parts/j-1/{i:05}.r.wav"))
                .collect(),
            marks_key: None,
            delivery: rendered.then(|| {
                Box::new(crate::job::Delivery {
                    format: crate::deliverable::Format::Mp3,
                    sample_rate: 44_100,
                    channels: 1,
                    bitrate_kbps: Some(128),
                    loudness_lufs: None,
                    true_peak_db: None,
                    captions: Vec::new(),
                })
            }),
            inference_time_seconds: None,
            segmind_cost: None,
            segmind_calls: 0,
            attempts: 1,
            metadata: None,
            served_from_storage: false,
        })
    }

    fn failed(code: ErrorCode) -> Outcome {
        let mut failure = Failure::invalid_request("x");
        failure.code = code;
        Outcome::Failed(Failed {
            job_id: JobId::parse("j-1", 64).unwrap(),
            failure,
            request_id: None,
            attempts: 1,
            metadata: None,
        })
    }

    fn intermediates(parts: usize) -> Option<Cleanup> {
        Some(Cleanup::Intermediates {
            job_id: JobId::parse("j-1", 64).unwrap(),
            objects: (0..parts)
                .map(|i| format!("parts/j-1/{i:05}.r.wav"))
                .collect(),
            parts,
        })
    }

    #[test]
    fn every_ending() {
        use HandOverReason::*;
        let finished = |o| Ending::Ran(JobEnd::Finished(Box::new(o)));
        // (ending, event?, dead letter?, settlement, cleanup, requeue reason)
        let cases = vec![
            (
                Ending::Refused(Box::new(failed(ErrorCode::InvalidRequest))),
                true,
                true,
                Settlement::Ack,
                None,
                None,
            ),
            (
                Ending::Refused(Box::new(failed(ErrorCode::PoisonMessage))),
                true,
                true,
                Settlement::Ack,
                None,
                None,
            ),
            (
                Ending::HandedBack(NewerVersion),
                false,
                false,
                Settlement::HandOver(NewerVersion),
                None,
                None,
            ),
            (
                finished(completed(1, false)),
                true,
                false,
                Settlement::Ack,
                None,
                None,
            ),
            (
                finished(completed(1, true)),
                true,
                false,
                Settlement::Ack,
                intermediates(1),
                None,
            ),
            (
                finished(completed(5, false)),
                true,
                false,
                Settlement::Ack,
                intermediates(5),
                None,
            ),
            // A failed job keeps its paid parts for a resend, whatever the code.
            (
                finished(failed(ErrorCode::InferenceFailed)),
                true,
                false,
                Settlement::Ack,
                None,
                None,
            ),
            (
                finished(failed(ErrorCode::ContentBlocked)),
                true,
                false,
                Settlement::Ack,
                None,
                None,
            ),
            (
                Ending::Ran(JobEnd::Requeue(ErrorCode::UpstreamUnavailable)),
                false,
                false,
                Settlement::Requeue,
                None,
                Some(ErrorCode::UpstreamUnavailable),
            ),
            (
                Ending::Ran(JobEnd::Requeue(ErrorCode::Internal)),
                false,
                false,
                Settlement::Requeue,
                None,
                Some(ErrorCode::Internal),
            ),
        ];
        let mut cases = cases;
        for reason in [
            Shutdown,
            Paused { caused: true },
            Paused { caused: false },
            Lifetime,
            ConsumerCancelled,
        ] {
            cases.push((
                Ending::Ran(JobEnd::HandOver(reason)),
                false,
                false,
                Settlement::HandOver(reason),
                None,
                None,
            ));
        }
        for (ending, event, dead_letter, settlement, cleanup, requeue) in cases {
            let what = format!("{ending:?}");
            let c = conclude(ending);
            assert_eq!(c.event.is_some(), event, "{what}");
            assert_eq!(
                c.event.as_ref().is_some_and(|(_, d)| *d),
                dead_letter,
                "{what}"
            );
            assert_eq!(c.settlement, settlement, "{what}");
            assert_eq!(c.cleanup, cleanup, "{what}");
            assert_eq!(c.requeue_reason, requeue, "{what}");
        }
    }

    #[test]
    fn a_deferral_dated_in_the_future_counts_from_now() {
        assert_eq!(deferred_for(None, 10_000), Duration::ZERO);
        assert_eq!(deferred_for(Some(4_000), 10_000), Duration::from_secs(6));
        assert_eq!(deferred_for(Some(99_000), 10_000), Duration::ZERO);
    }

    #[test]
    fn the_hand_back_hold_grows_with_the_wait_up_to_30_s() {
        let delay = Duration::from_secs(2);
        assert_eq!(handback_hold(delay, Duration::ZERO), delay);
        assert_eq!(
            handback_hold(delay, Duration::from_secs(80)),
            Duration::from_secs(10)
        );
        assert_eq!(
            handback_hold(delay, Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
        // Over the default 15-minute grace: a few dozen hand-backs.
        let (mut waited, mut handbacks) = (Duration::ZERO, 0);
        while waited < Duration::from_secs(900) {
            waited += handback_hold(delay, waited);
            handbacks += 1;
        }
        assert!((30..60).contains(&handbacks), "{handbacks}");
    }

    #[test]
    fn an_internal_fault_is_retried_and_counted() {
        let f = crate::failure::classify(&Internal, &[]);
        assert_eq!(f.code, ErrorCode::Internal);
        assert_eq!(f.class, Class::Transient);
        assert!(f.retryable());
    }

    struct Internal;
    impl std::fmt::Display for Internal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an invariant broke")
        }
    }
    impl crate::failure::AsFault for Internal {
        fn fault(&self) -> crate::failure::Fault<'_> {
            crate::failure::Fault::Internal
        }
    }
}
