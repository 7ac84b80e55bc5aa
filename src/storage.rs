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
    #[error("could not delete s3 object {key}: {detail}")]
    Delete { key: String, detail: String },
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

    /// Uploads `audio` under `key`. The object's metadata carries what a
    /// replayed completion event needs (checksum, job and request ids).
    pub async fn put(
        &self,
        key: &ObjectKey,
        audio: &Audio,
        job_id: &JobId,
        request_id: &str,
    ) -> Result<StoredAudio, StorageError> {
        let sha256 = hex::encode(Sha256::digest(&audio.bytes));
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(audio.format.content_type())
            .metadata("sha256", &sha256)
            .metadata("job-id", job_id.as_str())
            .metadata("segmind-request-id", request_id);
        if let Some(d) = audio.duration_seconds {
            request = request.metadata("duration-seconds", d.to_string());
        }
        request
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
            content_type: audio.format.content_type().to_owned(),
            size_bytes: audio.bytes.len() as u64,
            sha256,
            duration_seconds: audio.duration_seconds,
        })
    }

    /// Reads an object whole (used by `submit --out` and tests).
    pub async fn get(&self, key: &str) -> Result<StoredObject, StorageError> {
        self.fetch(key)
            .await?
            .ok_or_else(|| StorageError::Download {
                key: key.to_owned(),
                detail: "no such object".into(),
            })
    }

    /// Reads a small object whole; `None` when it does not exist.
    pub async fn get_optional(&self, key: &str) -> Result<Option<bytes::Bytes>, StorageError> {
        Ok(self.fetch(key).await?.map(|o| o.bytes))
    }

    async fn fetch(&self, key: &str) -> Result<Option<StoredObject>, StorageError> {
        let err = |detail: String| StorageError::Download {
            key: key.to_owned(),
            detail,
        };
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(err(DisplayErrorContext(&e).to_string())),
        };
        let content_type = out.content_type().map(str::to_owned);
        let sha256 = out.metadata().and_then(|m| m.get("sha256")).cloned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| err(e.to_string()))?
            .into_bytes();
        Ok(Some(StoredObject {
            bytes,
            content_type,
            sha256,
        }))
    }

    /// Writes a small object (checkpoints).
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::Upload {
                key: key.to_owned(),
                detail: DisplayErrorContext(&e).to_string(),
            })
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::Delete {
                key: key.to_owned(),
                detail: DisplayErrorContext(&e).to_string(),
            })
    }

    /// What an object's metadata says, without reading it; `None` when missing.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let meta = out.metadata();
                let get = |k: &str| meta.and_then(|m| m.get(k)).cloned();
                Ok(Some(ObjectInfo {
                    size_bytes: out.content_length().and_then(|n| u64::try_from(n).ok()),
                    content_type: out.content_type().map(str::to_owned),
                    sha256: get("sha256"),
                    job_id: get("job-id"),
                    request_id: get("segmind-request-id"),
                    duration_seconds: get("duration-seconds").and_then(|d| d.parse().ok()),
                }))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(StorageError::Download {
                key: key.to_owned(),
                detail: DisplayErrorContext(&e).to_string(),
            }),
        }
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

/// An object's size and the metadata the worker wrote with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub size_bytes: Option<u64>,
    pub content_type: Option<String>,
    pub sha256: Option<String>,
    pub job_id: Option<String>,
    pub request_id: Option<String>,
    pub duration_seconds: Option<f64>,
}
