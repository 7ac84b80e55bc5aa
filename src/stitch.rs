//! Joining the parts of a long text into one WAV: the arithmetic, without
//! I/O. How parts are read and the result uploaded is
//! [`crate::worker::parts`]'s business.
//!
//! Each part's audio is read as 16-bit PCM (an MP3 is decoded first) and
//! its speech is found when it is stored as an intermediate object: where
//! the silence at its start and end ends ([`crate::pcm::speech_bounds`]) is recorded, so
//! the stitch copies only the speech. Parts must share one PCM format
//! (Gemini's is 24 kHz mono). The stitched object is those PCM runs in order
//! with a pause between them chosen by what separates the parts
//! ([`pause_after`]): its length, its WAV header and the timing marks are
//! known before the first byte is uploaded ([`layout`]), and the upload is a
//! stream.
//!
//! Pure; it imports only [`crate::plan::Join`] and [`crate::pcm`].

use std::time::Duration;

use crate::pcm::{MARGIN, PcmFormat};
use crate::plan::Join;

/// The pause put after a part, by what separates it from the next: a
/// breath inside a sentence, a sentence's pause, a paragraph's (or a
/// dialogue turn's) longer one.
pub fn pause_after(join: Join) -> Duration {
    match join {
        Join::Within => Duration::from_millis(150),
        Join::Sentence => Duration::from_millis(400),
        Join::Paragraph => Duration::from_millis(800),
        Join::End => Duration::ZERO,
    }
}

/// Where a part sits in the stitched audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// First frame of the part's speech.
    pub start: u64,
    /// Frame after its speech (its pause follows).
    pub end: u64,
    /// Frames of silence after it.
    pub pause: u64,
}

/// The stitched audio's shape: where each part goes and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub format: PcmFormat,
    pub parts: Vec<Placed>,
    /// Frames in all.
    pub frames: u64,
}

/// Silence inserted after a part so the silence between two parts' speech
/// is the pause their join asks for: each part keeps up to [`MARGIN`] of its
/// own silence at either side, which counts towards the pause.
pub fn inserted_pause(join: Join) -> Duration {
    pause_after(join).saturating_sub(2 * MARGIN)
}

/// Lays out parts of `frames` each (their speech with its margins),
/// followed by the silence that makes their join's pause.
pub fn layout(format: PcmFormat, parts: &[(u64, Join)]) -> Layout {
    let mut at = 0u64;
    let placed = parts
        .iter()
        .map(|&(frames, join)| {
            let pause = format.frames_in(inserted_pause(join));
            let p = Placed {
                start: at,
                end: at + frames,
                pause,
            };
            at += frames + pause;
            p
        })
        .collect();
    Layout {
        format,
        parts: placed,
        frames: at,
    }
}

#[cfg(test)]
mod tests;
