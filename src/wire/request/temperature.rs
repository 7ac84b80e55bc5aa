//! `temperature`: the sampling temperature, a number from 0 to 2.

use serde_json::{Map, Value};

use super::json::type_name;
use crate::job::{DEFAULT_TEMPERATURE, TEMPERATURE_RANGE};

/// The request's `temperature`, or the default when it is absent or breaks
/// a rule.
pub(super) fn parse(object: &Map<String, Value>, reject: &mut impl FnMut(&str, String)) -> f64 {
    match object.get("temperature") {
        None | Some(Value::Null) => DEFAULT_TEMPERATURE,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if TEMPERATURE_RANGE.contains(&t) => t,
            _ => {
                reject("temperature", format!("must be between 0 and 2, got {n}"));
                DEFAULT_TEMPERATURE
            }
        },
        Some(other) => {
            reject(
                "temperature",
                format!("must be a number, got {}", type_name(other)),
            );
            DEFAULT_TEMPERATURE
        }
    }
}
