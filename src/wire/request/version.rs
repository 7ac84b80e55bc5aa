//! `version`: the request version, declared (a whole number from 1) or,
//! undeclared, the one its fields need up to [`UNDECLARED_UP_TO`].

use serde_json::{Map, Value};

use super::json::{type_name, whole_number};
use super::{FIELDS, UNDECLARED_UP_TO, used};

/// The request's version, for a replica accepting versions up to `known`.
/// A malformed `version` is rejected and counts as undeclared.
pub(super) fn parse(
    object: &Map<String, Value>,
    known: u32,
    reject: &mut impl FnMut(&str, String),
) -> u64 {
    let declared = match object.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match whole_number(n) {
            Some(v) if v >= 1 => Some(v),
            _ => {
                reject(
                    "version",
                    format!(
                        "must be a whole number from 1 (this replica knows 1 to {known}), got {n}"
                    ),
                );
                None
            }
        },
        Some(other) => {
            reject(
                "version",
                format!("must be a whole number, got {}", type_name(other)),
            );
            None
        }
    };
    // Undeclared, a request is the version its fields need, up to the
    // versions that predate the `version` field (their producers cannot
    // have declared it); a later field must be declared.
    declared.unwrap_or_else(|| {
        let needed = FIELDS
            .iter()
            .filter(|(field, since)| *since <= known && used(object, field))
            .map(|(_, since)| *since)
            .max()
            .unwrap_or(1);
        u64::from(needed.min(UNDECLARED_UP_TO))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::wire::request::testing::{decode, fields, invalid, older, rejected};
    use crate::wire::request::{RequestError, UNDECLARED_UP_TO, decode_request};

    #[test]
    fn an_undeclared_version_is_what_its_fields_need_up_to_the_versions_before_the_field() {
        // Producers written before `version` existed keep working.
        let job = decode(json!({"text": "a", "format": "ogg", "captions": ["vtt"]}))
            .job
            .unwrap();
        assert_eq!(job.deliverable.format.extension(), "ogg");
        assert_eq!(
            UNDECLARED_UP_TO, 2,
            "a field of version 3 will need declaring"
        );
    }

    #[test]
    fn a_newer_version_is_not_judged_here() {
        // Whatever its fields: a newer replica knows them.
        let d = decode(json!({"version": 3, "text": "a", "speed": 1.5, "job_id": "j-3"}));
        assert_eq!(d.job_id.as_str(), "j-3");
        assert_eq!(
            d.job.unwrap_err(),
            RequestError::NewerVersion {
                version: 3,
                known: 2
            }
        );
        // A replica that knows only version 1 hands version 2 back...
        let d = decode_request(
            br#"{"version": 2, "text": "a", "format": "mp3"}"#,
            None,
            &older(1),
        );
        assert_eq!(
            d.job.unwrap_err(),
            RequestError::NewerVersion {
                version: 2,
                known: 1
            }
        );
        // ...and calls version 2's fields unknown in a request that does
        // not declare it, as before versions existed.
        let d = decode_request(br#"{"text": "a", "format": "mp3"}"#, None, &older(1));
        let e = invalid(d.job, "an undeclared field older replicas do not know");
        assert!(e.to_string().contains("unknown field \"format\""), "{e}");
        assert!(
            !e.to_string().contains("captions"),
            "lists only what it knows: {e}"
        );
    }

    #[test]
    fn a_malformed_version_is_refused() {
        for bad in [json!(0), json!(-1), json!(1.5), json!("2"), json!([2])] {
            let e = rejected(json!({"version": bad, "text": "a"}));
            assert_eq!(fields(&e), ["version"], "{bad}");
        }
    }
}
