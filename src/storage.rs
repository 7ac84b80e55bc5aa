//! S3-compatible storage of the audio (and of checkpoints, through
//! [`crate::checkpoint`]).
//!
//! Audio objects carry their SHA-256 in the `sha256` user metadata and the
//! job id in `job-id`, so a consumer can check an object is complete; a
//! replayed completion reads its facts from the job's checkpoint and uses
//! [`Storage::head`] only to confirm the object is still the one recorded
//! there. Retries are the SDK's own (standard mode, `s3.max_attempts`) and
//! every call is bounded by `s3.operation_timeout`: this module adds no retry
//! layer. Errors say what kind of failure S3 reported ([`StorageFault`]) and
//! leave its meaning to [`crate::failure::classify`].

use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

use crate::audio::Audio;
use crate::config::S3Settings;
use crate::failure::{AsFault, Fault, StorageFault};
use crate::job::{JobId, ObjectKey, StoredAudio};

/// An S3 call that failed, with the kind of failure S3 (or the network)
/// reported.
#[derive(Debug, thiserror::Error)]
#[error("could not {action} {target}: {detail}")]
pub struct StorageError {
    action: &'static str,
    target: String,
    kind: StorageFault,
    detail: String,
    /// The HTTP status S3 answered, when it answered.
    status: Option<u16>,
}

impl StorageError {
    /// What kind of failure S3 (or the network) reported.
    pub fn kind(&self) -> StorageFault {
        self.kind
    }

    /// Whether a conditional write (`If-None-Match: *`) found the key taken.
    pub fn precondition_failed(&self) -> bool {
        self.status == Some(412)
    }

    /// Whether the store does not implement what was asked (501), e.g. a
    /// conditional write.
    pub fn not_implemented(&self) -> bool {
        self.status == Some(501)
    }
}

impl AsFault for StorageError {
    fn fault(&self) -> Fault<'_> {
        Fault::Storage(self.kind)
    }
}

/// Reads what kind of failure an SDK error is. Facts only: which S3 error
/// code or HTTP status came back, or that none did.
fn kind_of<E>(err: &SdkError<E, HttpResponse>) -> StorageFault
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::TimeoutError(_) => StorageFault::TimedOut,
        SdkError::DispatchFailure(d) if d.is_timeout() => StorageFault::TimedOut,
        SdkError::DispatchFailure(_) => StorageFault::Unreachable,
        SdkError::ConstructionFailure(_) => {
            // Signing fails here when no credentials can be found.
            if DisplayErrorContext(err).to_string().contains("credentials") {
                StorageFault::InvalidCredentials
            } else {
                StorageFault::Other
            }
        }
        _ => match err.code() {
            Some("NoSuchBucket") => StorageFault::NoSuchBucket,
            Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem") => {
                StorageFault::AccessDenied
            }
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired",
            ) => StorageFault::InvalidCredentials,
            Some(
                "InvalidRequest" | "InvalidArgument" | "KeyTooLong" | "EntityTooLarge"
                | "InvalidObjectName" | "MalformedXML" | "PreconditionFailed",
            ) => StorageFault::Rejected,
            // S3 asks for a retry on these 409s: another write to the key
            // was in progress.
            Some("ConditionalRequestConflict" | "OperationAborted") => StorageFault::Throttled,
            // A 400 about our configuration, not about the object.
            Some(
                "AuthorizationHeaderMalformed"
                | "InvalidRegion"
                | "IllegalLocationConstraintException",
            ) => StorageFault::InvalidCredentials,
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequests"
                | "RequestTimeout",
            ) => StorageFault::Throttled,
            _ => match err.raw_response().map(|r| r.status().as_u16()) {
                Some(403) => StorageFault::AccessDenied,
                Some(429 | 503) => StorageFault::Throttled,
                // Object-level refusals: the same call would be refused again.
                Some(400 | 411 | 412 | 413 | 414) => StorageFault::Rejected,
                Some(409) => StorageFault::Throttled,
                Some(s) if s >= 500 => StorageFault::ServerError,
                _ => StorageFault::Other,
            },
        },
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

fn storage_error<E>(
    action: &'static str,
    target: String,
    err: SdkError<E, HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    StorageError {
        action,
        kind: kind_of(&err),
        status: err.raw_response().map(|r| r.status().as_u16()),
        detail: DisplayErrorContext(&err).to_string(),
        target,
    }
}

/// One bucket. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
    /// Bounds the S3 calls open at once, hence the connections: the SDK's
    /// pool does not cap connections per host.
    open_calls: Arc<Semaphore>,
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
            // `segmind.job_deadline` does not cover storage: without this a
            // hung endpoint would hold the job (and its delivery) forever.
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(settings.operation_timeout)
                    .build(),
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
            open_calls: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        }
    }

    /// A slot for one S3 call; held until the call's answer is read. Every
    /// call takes its slot before the SDK's (large) future is allocated
    /// (`.boxed()`), so jobs queued for a slot hold a few bytes each.
    async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        // The semaphore is never closed; `None` would only mean no bound.
        self.open_calls.acquire().await.ok()
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn object(&self, key: &str) -> String {
        format!("s3 object {}/{key}", self.bucket)
    }

    /// Uploads `audio` under `key`, moving its bytes into the request body
    /// (no copy is made). The object's metadata carries its checksum and the
    /// job and Segmind request ids. With `only_if_absent` the write is
    /// conditional (`If-None-Match: *`): a key already taken fails with
    /// [`StorageError::precondition_failed`] instead of being overwritten.
    pub async fn put(
        &self,
        key: &ObjectKey,
        audio: Audio,
        job_id: &JobId,
        request_id: &str,
        only_if_absent: bool,
    ) -> Result<StoredAudio, StorageError> {
        let Audio {
            bytes,
            format,
            duration_seconds,
        } = audio;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size_bytes = bytes.len() as u64;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(format.content_type())
            .metadata("sha256", &sha256)
            .metadata("job-id", job_id.as_str())
            .metadata("segmind-request-id", request_id);
        if let Some(d) = duration_seconds {
            request = request.metadata("duration-seconds", d.to_string());
        }
        if only_if_absent {
            request = request.if_none_match("*");
        }
        let _slot = self.slot().await;
        // OpenTelemetry's AWS SDK conventions for an S3 call.
        let span = tracing::info_span!(
            "s3.upload",
            "otel.kind" = "client",
            "rpc.system" = "aws-api",
            "rpc.service" = "S3",
            "rpc.method" = "PutObject",
            "aws.s3.bucket" = self.bucket.as_str(),
            "aws.s3.key" = key.as_str(),
            "http.request.body.size" = size_bytes,
        );
        request
            .body(ByteStream::from(bytes))
            .send()
            .boxed()
            .instrument(span)
            .await
            .map_err(|e| storage_error("upload", self.object(key.as_str()), e))?;
        Ok(StoredAudio {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            content_type: format.content_type().to_owned(),
            size_bytes,
            sha256,
            duration_seconds,
        })
    }

    /// Reads an object whole (used by `submit --out` and tests).
    pub async fn get(&self, key: &str) -> Result<StoredObject, StorageError> {
        self.fetch(key).await?.ok_or_else(|| StorageError {
            action: "read",
            target: self.object(key),
            kind: StorageFault::Other,
            detail: "no such object".into(),
            status: None,
        })
    }

    /// Reads a small object whole; `None` when it does not exist.
    pub async fn get_optional(&self, key: &str) -> Result<Option<bytes::Bytes>, StorageError> {
        Ok(self.fetch(key).await?.map(|o| o.bytes))
    }

    async fn fetch(&self, key: &str) -> Result<Option<StoredObject>, StorageError> {
        let Some(out) = self.get_object(key).await? else {
            return Ok(None);
        };
        let sha256 = out.metadata().and_then(|m| m.get("sha256")).cloned();
        let bytes = out
            .body
            .collect()
            .boxed()
            .await
            .map_err(|e| StorageError {
                action: "read",
                target: self.object(key),
                kind: StorageFault::Unreachable,
                detail: e.to_string(),
                status: None,
            })?
            .into_bytes();
        Ok(Some(StoredObject { bytes, sha256 }))
    }

    /// Writes an object without metadata (checkpoints, marks, a long job's
    /// parts); the bytes move into the request.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: impl Into<bytes::Bytes>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let bytes: bytes::Bytes = bytes.into();
        let _slot = self.slot().await;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| storage_error("upload", self.object(key), e))
    }

    /// Writes a small object derived from a job's audio (its marks, its
    /// captions) with the job's id in its metadata, like the audio; with
    /// `only_if_absent` the write is conditional (`If-None-Match: *`).
    pub async fn put_derived(
        &self,
        key: &ObjectKey,
        bytes: bytes::Bytes,
        content_type: &str,
        job_id: &JobId,
        only_if_absent: bool,
    ) -> Result<(), StorageError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .metadata("job-id", job_id.as_str());
        if only_if_absent {
            request = request.if_none_match("*");
        }
        let _slot = self.slot().await;
        request
            .body(ByteStream::from(bytes))
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| storage_error("upload", self.object(key.as_str()), e))
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let _slot = self.slot().await;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .boxed()
            .await
            .map(|_| ())
            .map_err(|e| storage_error("delete", self.object(key), e))
    }

    /// The keys under `prefix` with when each was last written, page by
    /// page (ListObjectsV2).
    pub async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Option<chrono::DateTime<chrono::Utc>>)>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = {
                let _slot = self.slot().await;
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .boxed()
                    .await
                    .map_err(|e| {
                        storage_error("list", format!("s3 prefix {}/{prefix}", self.bucket), e)
                    })?
            };
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let modified = object
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                out.push((key.to_owned(), modified));
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// An object's size and the checksum and job id it was stored with,
    /// without reading it; `None` when missing.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let _slot = self.slot().await;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .boxed()
            .await
        {
            Ok(out) => {
                let meta = out.metadata();
                let get = |k: &str| meta.and_then(|m| m.get(k)).cloned();
                Ok(Some(ObjectInfo {
                    size_bytes: out.content_length().and_then(|n| u64::try_from(n).ok()),
                    sha256: get("sha256"),
                    job_id: get("job-id"),
                    etag: out.e_tag().map(str::to_owned),
                    content_type: out.content_type().map(str::to_owned),
                }))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(storage_error("inspect", self.object(key), e)),
        }
    }

    /// Opens an object for reading as a stream; `None` when it does not
    /// exist. The S3 slot bounds the request, not the body's reading: a
    /// reader that writes elsewhere while it reads (the stitch) must not
    /// hold a slot its own writes wait for.
    pub async fn read_stream(&self, key: &str) -> Result<Option<ObjectStream>, StorageError> {
        Ok(self.get_object(key).await?.map(|out| ObjectStream {
            body: out.body,
            target: self.object(key),
        }))
    }

    /// A GetObject answer (its body not read yet); `None` when the object
    /// does not exist. The slot is held for the request only.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StorageError> {
        let _slot = self.slot().await;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .boxed()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(storage_error("read", self.object(key), e)),
        }
    }

    /// Starts writing `key` in parts (S3 multipart upload): for objects too
    /// large to hold in memory. The object carries the job id (for the owner
    /// check) and `metadata`; it appears only when [`MultipartUpload::complete`]
    /// succeeds, and [`MultipartUpload::abort`] discards the parts.
    pub async fn start_multipart(
        &self,
        key: &ObjectKey,
        content_type: &str,
        job_id: &JobId,
        metadata: &[(&str, String)],
    ) -> Result<MultipartUpload, StorageError> {
        let mut request = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .content_type(content_type)
            .metadata("job-id", job_id.as_str());
        for (k, v) in metadata {
            request = request.metadata(*k, v);
        }
        let _slot = self.slot().await;
        let out = request
            .send()
            .boxed()
            .await
            .map_err(|e| storage_error("start an upload of", self.object(key.as_str()), e))?;
        let Some(upload_id) = out.upload_id().filter(|id| !id.is_empty()) else {
            return Err(StorageError {
                action: "start an upload of",
                target: self.object(key.as_str()),
                kind: StorageFault::ServerError,
                detail: "the store answered without an upload id".into(),
                status: None,
            });
        };
        Ok(MultipartUpload {
            storage: self.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_owned(),
            parts: Vec::new(),
            finished: AtomicBool::new(false),
        })
    }

    /// Copies the object at `from` to `to` as a stream of multipart parts
    /// (bounded memory whatever its size), carrying `job_id` and `metadata`;
    /// returns the new object's ETag and size, or `None` when `from` is gone.
    pub async fn copy_streamed(
        &self,
        from: &str,
        to: &ObjectKey,
        content_type: &str,
        job_id: &JobId,
        metadata: &[(&str, String)],
    ) -> Result<Option<(Option<String>, u64)>, StorageError> {
        let Some(mut source) = self.read_stream(from).await? else {
            return Ok(None);
        };
        let mut upload = self
            .start_multipart(to, content_type, job_id, metadata)
            .await?;
        let mut buffer = Vec::with_capacity(MIN_PART_BYTES);
        let mut size = 0u64;
        let copied = async {
            while let Some(chunk) = source.next_chunk().await? {
                size += chunk.len() as u64;
                buffer.extend_from_slice(&chunk);
                if buffer.len() >= MIN_PART_BYTES {
                    let full = std::mem::replace(&mut buffer, Vec::with_capacity(MIN_PART_BYTES));
                    upload.upload_part(full).await?;
                }
            }
            if !buffer.is_empty() {
                upload.upload_part(std::mem::take(&mut buffer)).await?;
            }
            Ok::<(), StorageError>(())
        }
        .await;
        let completed = match copied {
            Ok(()) => upload.complete(false).await,
            Err(e) => Err(e),
        };
        match completed {
            Ok(etag) => Ok(Some((etag, size))),
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// Checks the bucket exists and the credentials can reach it.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .boxed()
            .await
        {
            Ok(_) => Ok(()),
            // HEAD answers carry no error code: a 404 here is the bucket.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                Err(StorageError {
                    action: "reach",
                    target: format!("bucket {}", self.bucket),
                    kind: StorageFault::NoSuchBucket,
                    detail: "no such bucket".into(),
                    status: None,
                })
            }
            Err(e) => Err(storage_error("reach", format!("bucket {}", self.bucket), e)),
        }
    }
}

/// An object being read, chunk by chunk.
pub struct ObjectStream {
    body: ByteStream,
    target: String,
}

impl ObjectStream {
    /// The next chunk of the object; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, StorageError> {
        self.body
            .next()
            .await
            .transpose()
            .map_err(|e| StorageError {
                action: "read",
                target: self.target.clone(),
                kind: StorageFault::Unreachable,
                detail: e.to_string(),
                status: None,
            })
    }
}

/// An object being written in parts; every part but the last must be at
/// least 5 MiB (S3's rule). Dropped before it completes (the job was
/// dropped, or failed), it is aborted in the background, so its parts do
/// not linger (a killed process leaves them to the bucket's
/// `AbortIncompleteMultipartUpload` lifecycle rule).
pub struct MultipartUpload {
    storage: Storage,
    key: String,
    upload_id: String,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
    /// Completed or aborted (set through `&self` by [`Self::complete`]).
    finished: AtomicBool,
}

impl Drop for MultipartUpload {
    fn drop(&mut self) {
        if *self.finished.get_mut() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Finished as far as dropping goes: if the abort is itself dropped
        // unrun (the runtime shutting down cancels what is spawned then),
        // its drop must not spawn another (that recursed until the stack
        // overflowed). The bucket's lifecycle rule is the backstop.
        let upload = MultipartUpload {
            storage: self.storage.clone(),
            key: std::mem::take(&mut self.key),
            upload_id: std::mem::take(&mut self.upload_id),
            parts: Vec::new(),
            finished: AtomicBool::new(true),
        };
        *self.finished.get_mut() = true;
        runtime.spawn(upload.abort());
    }
}

/// S3's smallest part (but the last).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

impl MultipartUpload {
    /// Uploads the next part, moving its bytes into the request.
    pub async fn upload_part(&mut self, bytes: Vec<u8>) -> Result<(), StorageError> {
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let size = bytes.len();
        let span = tracing::info_span!(
            "s3.upload_part",
            "otel.kind" = "client",
            "rpc.system" = "aws-api",
            "rpc.service" = "S3",
            "rpc.method" = "UploadPart",
            "aws.s3.bucket" = self.storage.bucket.as_str(),
            "aws.s3.key" = self.key.as_str(),
            "aws.s3.part_number" = number,
            "http.request.body.size" = size,
        );
        let _slot = self.storage.slot().await;
        let out = self
            .storage
            .client
            .upload_part()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(bytes))
            .send()
            .boxed()
            .instrument(span)
            .await
            .map_err(|e| storage_error("upload a part of", self.storage.object(&self.key), e))?;
        self.parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// Assembles the parts into the object; returns its ETag. With
    /// `only_if_absent` the completion is conditional (`If-None-Match: *`,
    /// honoured by AWS S3 and MinIO): a key written meanwhile fails it with
    /// [`StorageError::precondition_failed`]. A failed completion leaves the
    /// upload as it was, to be completed again (unconditionally, once the
    /// key is known to be ours) or aborted: dropped, it aborts itself.
    pub async fn complete(&self, only_if_absent: bool) -> Result<Option<String>, StorageError> {
        let _slot = self.storage.slot().await;
        let mut request = self
            .storage
            .client
            .complete_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(self.parts.clone()))
                    .build(),
            );
        if only_if_absent {
            request = request.if_none_match("*");
        }
        let out = request.send().boxed().await.map_err(|e| {
            storage_error("complete the upload of", self.storage.object(&self.key), e)
        })?;
        self.finished.store(true, Ordering::Relaxed);
        Ok(out.e_tag().map(str::to_owned))
    }

    /// Discards the parts uploaded so far. A failure is only logged: the
    /// bucket's lifecycle rule for incomplete uploads is the backstop.
    pub async fn abort(mut self) {
        *self.finished.get_mut() = true;
        let _slot = self.storage.slot().await;
        if let Err(e) = self
            .storage
            .client
            .abort_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .boxed()
            .await
        {
            tracing::warn!(error = %DisplayErrorContext(&e), key = %self.key, "could not abort a multipart upload");
        }
    }
}

/// An object read back from storage.
#[derive(Debug)]
pub struct StoredObject {
    pub bytes: bytes::Bytes,
    /// The `sha256` metadata written at upload.
    pub sha256: Option<String>,
}

/// What replaying a completion checks about a stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub size_bytes: Option<u64>,
    pub sha256: Option<String>,
    pub job_id: Option<String>,
    /// Changes whenever the object is written again.
    pub etag: Option<String>,
    pub content_type: Option<String>,
}
