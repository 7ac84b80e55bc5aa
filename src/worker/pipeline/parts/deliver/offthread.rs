//! The plumbing of the delivery stage: synchronous PCM work (a loudness
//! meter or an encoder) on a blocking thread fed through a bounded channel
//! ([`OffThread`]), and the sink its bytes go to: one S3 multipart upload
//! part at a time, hashed on the way ([`Sink`]).

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::render::{self, Delivered, Meter, Render, RenderError};
use crate::storage::{MIN_PART_BYTES, MultipartUpload};
use crate::worker::pipeline::JobError;

/// Bytes of the delivered file uploaded per multipart part: what the
/// stage holds in memory (twice, while one part uploads and the next fills).
/// S3's minimum: 10,000 parts still take 50 GB, and an encoded file is far
/// smaller than the PCM it came from.
const UPLOAD_PART_BYTES: usize = MIN_PART_BYTES;

/// Chunks of PCM queued for the blocking thread: the PCM in memory.
const QUEUED_CHUNKS: usize = 4;

/// Synchronous PCM work (a meter or an encoder) the stage feeds.
pub(super) trait PcmWork {
    type Done: Send + 'static;
    fn push(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), RenderError>;
    fn finish(self, out: &mut Vec<u8>) -> Result<Self::Done, RenderError>;
}

impl PcmWork for Render {
    type Done = Delivered;
    fn push(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), RenderError> {
        Render::push(self, pcm, out)
    }
    fn finish(self, out: &mut Vec<u8>) -> Result<Delivered, RenderError> {
        Render::finish(self, out)
    }
}

impl PcmWork for Meter {
    type Done = render::Measured;
    fn push(&mut self, pcm: &[i16], _: &mut Vec<u8>) -> Result<(), RenderError> {
        Meter::push(self, pcm)
    }
    fn finish(self, _: &mut Vec<u8>) -> Result<render::Measured, RenderError> {
        Meter::finish(self)
    }
}

/// PCM work on a blocking thread: PCM in through a bounded channel, bytes
/// out through another (drained after every chunk sent, so it holds at
/// most what the queued chunks produce).
pub(super) struct OffThread<D> {
    pub(super) input: mpsc::Sender<Vec<i16>>,
    pub(super) output: mpsc::UnboundedReceiver<Vec<u8>>,
    pub(super) done: tokio::task::JoinHandle<Result<D, RenderError>>,
}

impl<D: Send + 'static> OffThread<D> {
    /// Builds the work on its thread (an encoder need not be `Send`).
    pub(super) fn spawn<W>(make: impl FnOnce() -> Result<W, RenderError> + Send + 'static) -> Self
    where
        W: PcmWork<Done = D>,
    {
        let (input, mut rx) = mpsc::channel::<Vec<i16>>(QUEUED_CHUNKS);
        let (tx, output) = mpsc::unbounded_channel();
        let done = tokio::task::spawn_blocking(move || {
            let mut work = make()?;
            let mut out = Vec::new();
            while let Some(pcm) = rx.blocking_recv() {
                work.push(&pcm, &mut out)?;
                if !out.is_empty() {
                    // The stage is gone when nobody receives: stop.
                    if tx.send(std::mem::take(&mut out)).is_err() {
                        break;
                    }
                }
            }
            let done = work.finish(&mut out)?;
            if !out.is_empty() {
                let _ = tx.send(out);
            }
            Ok(done)
        });
        OffThread {
            input,
            output,
            done,
        }
    }
}

/// Where the delivered bytes go: a buffer of one upload part, hashed on the
/// way.
pub(super) struct Sink<'u> {
    upload: &'u mut MultipartUpload,
    buffer: Vec<u8>,
    hasher: Sha256,
    written: u64,
}

impl<'u> Sink<'u> {
    pub(super) fn new(upload: &'u mut MultipartUpload) -> Self {
        Sink {
            upload,
            buffer: Vec::with_capacity(UPLOAD_PART_BYTES),
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub(super) async fn write(&mut self, mut bytes: &[u8]) -> Result<(), JobError> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = UPLOAD_PART_BYTES - self.buffer.len();
            let n = room.min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buffer.len() == UPLOAD_PART_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), JobError> {
        let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(UPLOAD_PART_BYTES));
        Box::pin(self.upload.upload_part(full)).await?;
        Ok(())
    }

    /// Uploads what is left; returns the SHA-256 and the bytes written.
    pub(super) async fn finish(mut self) -> Result<(String, u64), JobError> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        Ok((hex::encode(self.hasher.finalize()), self.written))
    }
}
