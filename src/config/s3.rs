//! `[s3]`: the bucket, its prefixes and the SDK's bounds.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{ConfigError, http_url, invalid, positive, seconds};

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<Url>,
    pub region: String,
    /// Prefix of default keys and of the worker's own objects
    /// (`{prefix}_checkpoints/`).
    pub prefix: String,
    /// Prefix every producer-chosen `output_key` is stored under.
    pub output_prefix: String,
    pub force_path_style: bool,
    pub max_attempts: u32,
    /// Bound on one S3 call, the SDK's retries included.
    pub operation_timeout: Duration,
    /// S3 calls this process has open at once.
    pub max_concurrent_requests: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub(super) bucket: String,
    pub(super) endpoint: Option<String>,
    pub(super) region: String,
    pub(super) prefix: String,
    pub(super) output_prefix: String,
    pub(super) force_path_style: bool,
    pub(super) max_attempts: u32,
    pub(super) operation_timeout: f64,
    pub(super) max_concurrent_requests: u32,
}

impl RawS3 {
    pub(super) fn validate(self) -> Result<S3Settings, ConfigError> {
        // S3 bucket naming rules, the subset every implementation accepts.
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(invalid(
                "s3.bucket",
                "must be 3 to 63 lower-case letters, digits, '-' or '.'",
            ));
        }
        let endpoint = match self.endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(e) => Some(http_url("s3.endpoint", e)?),
        };
        if self.region.trim().is_empty() {
            return Err(invalid("s3.region", "must not be empty"));
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|s| s == "..") {
            return Err(invalid(
                "s3.prefix",
                "must be relative: no leading '/' and no '..' segment",
            ));
        }
        for (key, prefix) in [
            ("s3.prefix", &self.prefix),
            ("s3.output_prefix", &self.output_prefix),
        ] {
            if prefix.starts_with('/')
                || prefix.split('/').any(|s| s == ".." || s == ".")
                || prefix.chars().any(char::is_control)
            {
                return Err(invalid(
                    key,
                    "must be relative: no leading '/', no '.' or '..' segment, no control characters",
                ));
            }
        }
        let reserved = if self.prefix.is_empty() {
            "_"
        } else {
            self.prefix.as_str()
        };
        if self.output_prefix.starts_with(reserved) {
            return Err(invalid(
                "s3.output_prefix",
                format!(
                    "must not lie in the worker's own area {reserved:?} (s3.prefix): every producer key would be refused"
                ),
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("s3.max_attempts", "must be at least 1"));
        }
        Ok(S3Settings {
            bucket: self.bucket,
            endpoint,
            region: self.region,
            prefix: self.prefix,
            output_prefix: self.output_prefix,
            force_path_style: self.force_path_style,
            max_attempts: self.max_attempts,
            operation_timeout: seconds("s3.operation_timeout", self.operation_timeout)?,
            max_concurrent_requests: positive(
                "s3.max_concurrent_requests",
                self.max_concurrent_requests,
            )?,
        })
    }
}
