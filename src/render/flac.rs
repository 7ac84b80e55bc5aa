//! FLAC, 16-bit mono, encoded block by block with flacenc's per-frame API.
//!
//! The `fLaC` marker and STREAMINFO are written here, not by flacenc: the
//! stream has to start before its frames are known, and flacenc 0.5.1 folds a
//! short last block into the minimum block size (upstream issue #242), which
//! makes the stream non-conformant (RFC 9639 §8.2: the minimum excludes the
//! last block). Ours says what a fixed-blocksize stream is: minimum =
//! maximum = [`BLOCK_SIZE`], total samples known up front, frame sizes 0
//! (unknown, allowed) and MD5 0 (unset, allowed: it is known only at the end
//! and the header cannot be rewritten in a stream).

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, StreamInfo};
use flacenc::config;
use flacenc::error::{Verified, Verify};
use flacenc::source::{Fill, FrameBuf};

use super::RenderError;

/// Samples per frame (the last frame may be shorter).
pub(crate) const BLOCK_SIZE: usize = 4096;

pub(crate) struct FlacEncoder {
    rate: u32,
    total_samples: u64,
    config: Verified<config::Encoder>,
    /// Given to flacenc for the frame headers (rate and sample size codes).
    stream_info: StreamInfo,
    block: Vec<i32>,
    framebuf: FrameBuf,
    frame_number: usize,
    sink: ByteSink,
}

impl FlacEncoder {
    pub(crate) fn new(rate: u32, total_samples: u64) -> Result<Self, RenderError> {
        if total_samples >= 1 << 36 {
            return Err(RenderError::Flac(format!(
                "{total_samples} samples do not fit STREAMINFO"
            )));
        }
        let mut config = config::Encoder::default();
        config.block_size = BLOCK_SIZE;
        let config = config
            .into_verified()
            .map_err(|(_, e)| RenderError::Flac(e.to_string()))?;
        let stream_info =
            StreamInfo::new(rate as usize, 1, 16).map_err(|e| RenderError::Flac(e.to_string()))?;
        let framebuf =
            FrameBuf::with_size(1, BLOCK_SIZE).map_err(|e| RenderError::Flac(e.to_string()))?;
        Ok(FlacEncoder {
            rate,
            total_samples,
            config,
            stream_info,
            block: Vec::with_capacity(BLOCK_SIZE),
            framebuf,
            frame_number: 0,
            sink: ByteSink::with_capacity(BLOCK_SIZE * 16),
        })
    }

    /// The `fLaC` marker and the STREAMINFO block (the only, last, metadata
    /// block).
    pub(crate) fn start(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"fLaC");
        // Last-metadata-block flag, type 0 (STREAMINFO), length 34.
        out.extend_from_slice(&[0x80, 0, 0, 34]);
        let block = BLOCK_SIZE as u16;
        out.extend_from_slice(&block.to_be_bytes()); // minimum block size
        out.extend_from_slice(&block.to_be_bytes()); // maximum block size
        out.extend_from_slice(&[0; 3]); // minimum frame size: unknown
        out.extend_from_slice(&[0; 3]); // maximum frame size: unknown
        // 20 bits rate, 3 bits channels − 1 (0: mono), 5 bits bits per
        // sample − 1, 36 bits total samples.
        let packed: u64 = (u64::from(self.rate) << 44)
            | ((16u64 - 1) << 36)
            | (self.total_samples & ((1 << 36) - 1));
        out.extend_from_slice(&packed.to_be_bytes());
        out.extend_from_slice(&[0; 16]); // MD5: unset
    }

    pub(crate) fn push(&mut self, samples: &[i16], out: &mut Vec<u8>) -> Result<(), RenderError> {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (BLOCK_SIZE - self.block.len()).min(rest.len());
            self.block
                .extend(rest[..take].iter().map(|&s| i32::from(s)));
            rest = &rest[take..];
            if self.block.len() == BLOCK_SIZE {
                self.frame(out)?;
            }
        }
        Ok(())
    }

    /// Encodes the last, short, block.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RenderError> {
        if !self.block.is_empty() {
            self.frame(out)?;
        }
        Ok(())
    }

    fn frame(&mut self, out: &mut Vec<u8>) -> Result<(), RenderError> {
        self.framebuf
            .fill_interleaved(&self.block)
            .map_err(|e| RenderError::Flac(e.to_string()))?;
        let frame = flacenc::encode_fixed_size_frame(
            &self.config,
            &self.framebuf,
            self.frame_number,
            &self.stream_info,
        )
        .map_err(|e| RenderError::Flac(e.to_string()))?;
        self.sink.clear();
        frame
            .write(&mut self.sink)
            .map_err(|e| RenderError::Flac(e.to_string()))?;
        out.extend_from_slice(self.sink.as_slice());
        self.frame_number += 1;
        self.block.clear();
        Ok(())
    }
}
