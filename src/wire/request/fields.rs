//! The request's keys against [`FIELDS`](super::FIELDS): a field of a
//! version the request does not declare is refused (with the version to
//! declare), a field of no version this replica knows is unknown (typos such
//! as `voice1` are caught).

use serde_json::{Map, Value};

use super::{field_version, known_fields, used};

/// Unknown fields named one by one; past them, only their count.
const UNKNOWN_NAMED: usize = 3;

/// Rejects every key of a request of `version` that a replica accepting
/// versions up to `known` does not take. Unknown fields are named up to
/// [`UNKNOWN_NAMED`], then counted: a body of a million unknown keys gets
/// a message of a few lines.
pub(super) fn check(
    object: &Map<String, Value>,
    version: u64,
    known: u32,
    reject: &mut impl FnMut(&str, String),
) {
    let mut unknown = 0usize;
    for key in object.keys() {
        match field_version(key) {
            Some(since) if since <= known => {
                if u64::from(since) > version && used(object, key) {
                    reject(
                        key,
                        format!(
                            "came in request version {since}: send \"version\": {since} to use it (this request is version {version})"
                        ),
                    );
                }
            }
            _ => {
                unknown += 1;
                if unknown > UNKNOWN_NAMED {
                    continue;
                }
                let shown: String = key.chars().take(64).collect();
                let rule = match suggest_field(key, known) {
                    Some(field) => format!("unknown field {shown:?} (did you mean {field:?}?)"),
                    None => format!(
                        "unknown field {shown:?}; allowed: {}",
                        known_fields(known).collect::<Vec<_>>().join(", ")
                    ),
                };
                reject(key_label(key), rule);
            }
        }
    }
    if unknown > UNKNOWN_NAMED {
        reject(
            "(unknown fields)",
            format!(
                "{} more unknown fields ({unknown} in all)",
                unknown - UNKNOWN_NAMED
            ),
        );
    }
}

/// Field names in error messages are cut and cleaned, so a hostile key cannot
/// flood a log line or an AMQP header.
fn key_label(key: &str) -> &str {
    if key.len() <= 64 && key.chars().all(|c| !c.is_control()) {
        key
    } else {
        "(unknown field)"
    }
}

fn suggest_field(key: &str, known: u32) -> Option<&'static str> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let wanted = norm(key);
    known_fields(known).find(|k| {
        let k = norm(k);
        k == wanted
            || (wanted == "voice" && k == "voice1")
            || (wanted == "temp" && k == "temperature")
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::wire::request::decode_request;
    use crate::wire::request::testing::{decode, fields, invalid, limits, older, rejected};

    #[test]
    fn a_declared_version_must_cover_the_fields_it_uses() {
        let e = rejected(json!({"version": 1, "text": "a", "format": "mp3", "sample_rate": 16000}));
        assert_eq!(fields(&e), ["format", "sample_rate"]);
        assert!(
            e.to_string()
                .contains("came in request version 2: send \"version\": 2"),
            "{e}"
        );
        let job = decode(json!({"version": 2, "text": "a", "format": "mp3"}))
            .job
            .unwrap();
        assert_eq!(job.deliverable.format.extension(), "mp3");
        // A version-1 request may say so; a null field is not used.
        assert!(decode(json!({"version": 1, "text": "a"})).job.is_ok());
        assert!(
            decode(json!({"version": 1, "text": "a", "format": null}))
                .job
                .is_ok()
        );
    }

    #[test]
    fn typos_are_caught_in_every_version() {
        for (limits, body) in [
            (limits(), json!({"text": "a", "voice1": "Puck"})),
            (
                limits(),
                json!({"version": 2, "text": "a", "voice1": "Puck"}),
            ),
            (older(1), json!({"text": "a", "voice1": "Puck"})),
        ] {
            let d = decode_request(body.to_string().as_bytes(), None, &limits);
            let e = invalid(d.job, &body.to_string());
            assert!(e.to_string().contains("did you mean \"voice_1\""), "{e}");
        }
        let e = rejected(json!({"version": 2, "text": "a", "Captions": ["vtt"]}));
        assert!(e.to_string().contains("did you mean \"captions\""), "{e}");
    }
}
