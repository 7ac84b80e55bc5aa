//! S3-compatible storage of the audio.
//!
//! Objects carry their SHA-256 in the `sha256` user metadata and the job id in
//! `job-id`, so a consumer (or a later run) can check an object is complete.
//! Retries are the SDK's own (standard mode, `s3.max_attempts`): this module
//! adds none, so there is exactly one retry layer per call.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};

use crate::audio::Audio;
use crate::config::S3Settings;
use crate::job::{JobId, ObjectKey, StoredAudio};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("could not upload s3 object {key}: {detail}")]
    Upload { key: String, detail: String },
    #[error("could not read s3 object {key}: {detail}")]
    Download { key: String, detail: String },
    #[error("bucket {bucket} is not reachable: {detail}")]
    Bucket { bucket: String, detail: String },
}

/// Uploads audio to one bucket. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
}

impl Storage {
    /// Builds a client from the standard AWS credential chain (environment,
    /// profile, web identity, IMDS…) and `settings`.
    pub async fn new(settings: &S3Settings) -> Self {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .load()
            .await;
        Self::from_shared(&shared, settings)
    }

    /// Builds a client with static credentials (tests, tools).
    pub fn with_static_credentials(
        settings: &S3Settings,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Self {
        let shared = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                Credentials::new(access_key_id, secret_access_key, None, None, "static"),
            ))
            .build();
        Self::from_shared(&shared, settings)
    }

    fn from_shared(shared: &aws_config::SdkConfig, settings: &S3Settings) -> Self {
        let mut config = aws_sdk_s3::config::Builder::from(shared)
            .force_path_style(settings.force_path_style)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard()
                    .with_max_attempts(settings.max_attempts),
            )
            // S3-compatible servers differ in their support of the newer
            // default checksums; our own SHA-256 in metadata covers integrity.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        Storage {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Uploads `audio` under `key`.
    pub async fn put(
        &self,
        key: &ObjectKey,
        audio: &Audio,
        job_id: &JobId,
    ) -> Result<StoredAudio, StorageError> {
        let sha256 = hex::encode(Sha256::digest(&audio.bytes));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(audio.format.content_type())
            .metadata("sha256", &sha256)
            .metadata("job-id", job_id.as_str())
            .body(ByteStream::from(audio.bytes.clone()))
            .send()
            .await
            .map_err(|e| StorageError::Upload {
                key: key.to_string(),
                detail: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(StoredAudio {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            content_type: audio.format.content_type(),
            size_bytes: audio.bytes.len() as u64,
            sha256,
            duration_seconds: audio.duration_seconds,
        })
    }

    /// Reads an object whole (used by `submit --out` and tests).
    pub async fn get(&self, key: &str) -> Result<StoredObject, StorageError> {
        let err = |detail: String| StorageError::Download {
            key: key.to_owned(),
            detail,
        };
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err(DisplayErrorContext(&e).to_string()))?;
        let content_type = out.content_type().map(str::to_owned);
        let sha256 = out.metadata().and_then(|m| m.get("sha256")).cloned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .into_bytes();
        Ok(StoredObject {
            bytes,
            content_type,
            sha256,
        })
    }

    /// Checks the bucket exists and the credentials can reach it.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::Bucket {
                bucket: self.bucket.clone(),
                detail: DisplayErrorContext(&e).to_string(),
            })
    }
}

/// An object read back from storage.
#[derive(Debug)]
pub struct StoredObject {
    pub bytes: bytes::Bytes,
    pub content_type: Option<String>,
    /// The `sha256` metadata written at upload.
    pub sha256: Option<String>,
}
