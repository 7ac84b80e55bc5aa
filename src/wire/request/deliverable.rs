//! The deliverable's fields (version 2: `format`, `sample_rate`,
//! `bitrate_kbps`, `loudness_lufs`, `true_peak_db`, `captions`): their JSON
//! types here, their values' rules in [`Deliverable::new`].

use serde_json::{Map, Value};

use super::json::{type_name, whole_number};
use crate::deliverable::{Asked, Deliverable};

/// The deliverable the request asks for, or the default when any of its
/// fields breaks a rule (each broken rule rejected under its field).
pub(super) fn parse(
    object: &Map<String, Value>,
    reject: &mut impl FnMut(&str, String),
) -> Deliverable {
    match Deliverable::new(&asked(object, reject)) {
        Ok(d) => d,
        Err(refusals) => {
            for r in refusals {
                reject(r.field, r.message);
            }
            Deliverable::default()
        }
    }
}

/// The deliverable's fields as given, each of the JSON type it must be
/// (a wrong type is reported here; the values' rules in [`Deliverable::new`]).
fn asked(object: &Map<String, Value>, reject: &mut impl FnMut(&str, String)) -> Asked {
    let mut string = |field: &str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            reject(field, format!("must be a string, got {}", type_name(other)));
            None
        }
    };
    let format = string("format");
    let mut whole = |field: &str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match whole_number(n).and_then(|n| u32::try_from(n).ok()) {
            Some(v) => Some(v),
            None => {
                reject(field, format!("must be a positive whole number, got {n}"));
                None
            }
        },
        Some(other) => {
            reject(field, format!("must be a number, got {}", type_name(other)));
            None
        }
    };
    let sample_rate = whole("sample_rate");
    let bitrate_kbps = whole("bitrate_kbps");
    let mut number = |field: &str| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            reject(field, format!("must be a number, got {}", type_name(other)));
            None
        }
    };
    let loudness_lufs = number("loudness_lufs");
    let true_peak_db = number("true_peak_db");
    let captions = match object.get("captions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => names.push(s.clone()),
                    other => reject(
                        "captions",
                        format!(
                            "must list strings (\"vtt\", \"srt\"), got {}",
                            type_name(other)
                        ),
                    ),
                }
            }
            Some(names)
        }
        Some(other) => {
            reject(
                "captions",
                format!("must be a list such as [\"vtt\"], got {}", type_name(other)),
            );
            None
        }
    };
    Asked {
        format,
        sample_rate,
        bitrate_kbps,
        loudness_lufs,
        true_peak_db,
        captions,
    }
}
