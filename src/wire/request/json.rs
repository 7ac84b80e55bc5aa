//! What the field parsers share about JSON values: the names of their types
//! in error messages, and whole numbers however they are written.

use serde_json::Value;

/// A JSON number that is a whole number ≥ 0, written `64` or `64.0` (JSON
/// Schema and many serializers treat both as the integer 64).
pub(super) fn whole_number(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // 2^53: past it an f64 no longer holds every whole number.
        (f >= 0.0 && f.fract() == 0.0 && f <= 9_007_199_254_740_992.0).then_some(f as u64)
    })
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::wire::request::testing::{decode, fields, rejected};

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let job = decode(json!({"version": 2.0, "text": "a", "format": "mp3",
                                "sample_rate": 44100.0, "bitrate_kbps": 128.0}))
        .job
        .unwrap();
        assert_eq!(job.deliverable.sample_rate, 44_100);
        assert_eq!(job.deliverable.bitrate_kbps, Some(128));
        let e = rejected(json!({"version": 2, "text": "a", "sample_rate": 16000.5}));
        assert_eq!(fields(&e), ["sample_rate"]);
    }
}
