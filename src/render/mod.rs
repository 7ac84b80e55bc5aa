//! Encoding the delivered audio: mono 16-bit PCM at the source rate in,
//! encoded bytes of the deliverable's format out, streaming.
//!
//! [`Render`] resamples (band-limited, time-aligned, exact length), applies
//! one gain, and encodes WAV, G.711 μ-law WAV, MP3, Opus in Ogg or FLAC,
//! appending bytes to the caller's buffer as they are produced: memory stays
//! bounded (well under a few MB) whatever the length. [`Render::finish`]
//! reports what was delivered, with loudness and true peak measured on what a
//! decoder of the file gets. [`Meter`] and [`gain_db`] are the first pass of
//! loudness normalisation.
//!
//! Pure, synchronous DSP: no I/O, no async. Call it from a blocking thread.

mod flac;
mod loudness;
mod mp3;
mod opus;
mod resample;
mod wav;

#[cfg(test)]
mod tests;

pub use loudness::{MAKE_UP_PASSES, Measured, Meter, ceiling_db, gain_db, limits, made_up_gain};

use crate::deliverable::Format;
use loudness::LoudnessMeter;
use resample::Resampler;
pub use tts_true_peak::Limiter;

/// Input frames processed at a time: bounds every scratch buffer.
const BLOCK: usize = 4096;

/// Why audio could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid render spec: {0}")]
    Spec(String),
    #[error("{frames} frames are too long for a WAV file (4 GiB)")]
    TooLong { frames: u64 },
    #[error("more input than announced: {announced} frames")]
    TooMuchInput { announced: u64 },
    #[error("input ended after {got} of {announced} announced frames")]
    ShortInput { got: u64, announced: u64 },
    #[error("resampler: {0}")]
    Resample(String),
    #[error("loudness meter: {0}")]
    Meter(String),
    #[error("mp3 encoder: {0}")]
    Mp3(String),
    #[error("opus encoder: {0}")]
    Opus(String),
    #[error("flac encoder: {0}")]
    Flac(String),
}

/// What to render.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSpec {
    pub format: Format,
    /// Rate of the PCM pushed (normally [`crate::deliverable::SOURCE_RATE`]).
    pub input_rate: u32,
    /// Rate of the delivered file; one of `format.rates()`.
    pub output_rate: u32,
    /// MP3 and Opus: the bitrate; `None` takes the format's default.
    /// Ignored by the other formats.
    pub bitrate_kbps: Option<u32>,
    /// Linear gain applied to every sample (see [`gain_db`]).
    pub gain_db: f64,
    /// The true-peak ceiling (dBTP, of the PCM before encoding) a look-ahead
    /// limiter holds after the gain (see [`ceiling_db`]); `None`: no
    /// limiter, the samples are only clipped to 16 bits.
    pub ceiling_db: Option<f64>,
    /// Frames that will be pushed, in total.
    pub input_frames: u64,
}

impl RenderSpec {
    /// Exact number of frames the delivered audio has at `output_rate`,
    /// known before encoding: `round(input_frames × output / input)`. For
    /// WAV, μ-law and FLAC this is what the header says; Opus's final granule
    /// position trims the stream to it. The resampler's delay is trimmed at
    /// the start and its tail flushed, so a sample at input time t is at
    /// output time t.
    pub fn output_frames(&self) -> u64 {
        Resampler::output_len(self.input_frames, self.input_rate, self.output_rate)
    }

    fn bitrate(&self) -> Option<u32> {
        match self.format {
            Format::Mp3 | Format::Ogg => self
                .bitrate_kbps
                .or_else(|| self.format.default_bitrate(self.output_rate)),
            Format::Wav | Format::Mulaw | Format::Flac => None,
        }
    }

    fn validate(&self) -> Result<(), RenderError> {
        if self.input_rate == 0 {
            return Err(RenderError::Spec("input rate 0 Hz".into()));
        }
        if !self.format.rates().contains(&self.output_rate) {
            return Err(RenderError::Spec(format!(
                "{} cannot be written at {} Hz",
                self.format, self.output_rate
            )));
        }
        if let (Some(b), Some(allowed)) = (self.bitrate(), self.format.bitrates(self.output_rate))
            && !allowed.contains(&b)
        {
            return Err(RenderError::Spec(format!(
                "{} at {} Hz cannot be coded at {b} kbit/s",
                self.format, self.output_rate
            )));
        }
        if !self.gain_db.is_finite() || self.gain_db.abs() > 120.0 {
            return Err(RenderError::Spec(format!("gain {} dB", self.gain_db)));
        }
        if let Some(c) = self.ceiling_db
            && !(-60.0..=0.0).contains(&c)
        {
            return Err(RenderError::Spec(format!("true-peak ceiling {c} dBTP")));
        }
        Ok(())
    }
}

/// What was delivered, measured on the delivered audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// Frames of programme at `sample_rate` ([`RenderSpec::output_frames`]):
    /// what a decoder of the file gives, for MP3 too (its Info frame tells
    /// the decoder LAME's delay and padding), so marks need no shift.
    pub frames: u64,
    pub sample_rate: u32,
    pub channels: u16,
    pub bitrate_kbps: Option<u32>,
    /// `frames / sample_rate`.
    pub duration_seconds: f64,
    /// Integrated loudness of the decoded file, LUFS; `None` when −∞
    /// (silence, under 400 ms).
    pub loudness_lufs: Option<f64>,
    /// True peak of the decoded file, dBTP; `None` for digital silence.
    pub true_peak_db: Option<f64>,
    /// Samples that the gain pushed past 16-bit full scale and that were
    /// clipped (0 with the limiter, barring rounding).
    pub clipped_samples: u64,
    /// Samples whose gain the limiter lowered (0 without one).
    pub limited_samples: u64,
}

/// The format-specific end of the chain: i16 at the output rate in, bytes
/// out, and the delivered audio metered as a decoder gets it.
enum Encoder {
    /// WAV and FLAC deliver the samples written; the meter sees them.
    Wav,
    Mulaw,
    Flac(Box<flac::FlacEncoder>),
    Mp3(Box<mp3::Mp3Encoder>),
    Ogg(Box<opus::OggOpusEncoder>),
}

/// A streaming renderer of one deliverable.
pub struct Render {
    spec: RenderSpec,
    output_frames: u64,
    resampler: Resampler,
    gain: f32,
    limiter: Option<Limiter>,
    encoder: Encoder,
    /// Meters the delivered audio (the encoders that decode meter inside).
    meter: LoudnessMeter,
    pushed: u64,
    started: bool,
    clipped: u64,
    resampled: Vec<f32>,
    limited: Vec<f32>,
    samples: Vec<i16>,
    bytes: Vec<u8>,
}

impl Render {
    pub fn new(spec: RenderSpec) -> Result<Render, RenderError> {
        spec.validate()?;
        let output_frames = spec.output_frames();
        let rate = spec.output_rate;
        let encoder = match spec.format {
            Format::Wav => {
                // Refuse lengths a header cannot say before any byte is out.
                wav::pcm_header(rate, output_frames)?;
                Encoder::Wav
            }
            Format::Mulaw => {
                wav::mulaw_header(rate, output_frames)?;
                Encoder::Mulaw
            }
            Format::Flac => Encoder::Flac(Box::new(flac::FlacEncoder::new(rate, output_frames)?)),
            Format::Mp3 => Encoder::Mp3(Box::new(mp3::Mp3Encoder::new(
                rate,
                spec.bitrate().unwrap_or(64),
            )?)),
            Format::Ogg => Encoder::Ogg(Box::new(opus::OggOpusEncoder::new(
                rate,
                spec.bitrate().unwrap_or(32),
                output_frames,
            )?)),
        };
        Ok(Render {
            output_frames,
            resampler: Resampler::new(spec.input_rate, rate)?,
            gain: 10f64.powf(spec.gain_db / 20.0) as f32,
            limiter: spec.ceiling_db.map(|c| Limiter::new(rate, c)),
            encoder,
            meter: LoudnessMeter::new(rate)?,
            pushed: 0,
            started: false,
            clipped: 0,
            resampled: Vec::with_capacity(2 * BLOCK),
            limited: Vec::with_capacity(2 * BLOCK),
            samples: Vec::with_capacity(2 * BLOCK),
            bytes: Vec::new(),
            spec,
        })
    }

    /// The spec this renders.
    pub fn spec(&self) -> &RenderSpec {
        &self.spec
    }

    /// Resamples, applies the gain and encodes `pcm` (mono, input rate, any
    /// length), appending the bytes produced to `out`.
    ///
    /// The gain is linear, followed by the limiter when the spec has a
    /// ceiling, and the result clipped to 16 bits (counted in
    /// [`Delivered::clipped_samples`]).
    pub fn push(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), RenderError> {
        let announced = self.spec.input_frames;
        if self.pushed + pcm.len() as u64 > announced {
            return Err(RenderError::TooMuchInput { announced });
        }
        self.pushed += pcm.len() as u64;
        self.start(out)?;
        for block in pcm.chunks(BLOCK) {
            self.resampled.clear();
            self.resampler.push(block, &mut self.resampled)?;
            self.encode(out, false)?;
        }
        Ok(())
    }

    /// Flushes the resampler and the encoder (appending the last bytes to
    /// `out`) and reports what was delivered, measured on the delivered
    /// audio: integrated loudness and true peak (EBU R128, `ebur128`) of the
    /// samples written for WAV and FLAC, of the table-decoded samples for
    /// μ-law, of each Opus packet decoded again by libopus at the output
    /// rate (pre-skip and end trimmed), and of the MP3 frames decoded in
    /// stream by Symphonia (LAME's delay and padding, silence, included:
    /// neither the gated loudness nor the peak sees them).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<Delivered, RenderError> {
        if self.pushed != self.spec.input_frames {
            return Err(RenderError::ShortInput {
                got: self.pushed,
                announced: self.spec.input_frames,
            });
        }
        self.start(out)?;
        self.resampled.clear();
        self.resampler.finish(&mut self.resampled)?;
        self.encode(out, true)?;
        let measured = match self.encoder {
            Encoder::Wav => self.meter.measured()?,
            Encoder::Mulaw => {
                out.extend_from_slice(wav::mulaw_trailer(self.output_frames));
                self.meter.measured()?
            }
            Encoder::Flac(mut e) => {
                e.finish(out)?;
                self.meter.measured()?
            }
            Encoder::Mp3(e) => e.finish(out)?,
            Encoder::Ogg(e) => e.finish(out)?,
        };
        let rate = self.spec.output_rate;
        Ok(Delivered {
            frames: self.output_frames,
            sample_rate: rate,
            channels: 1,
            bitrate_kbps: self.spec.bitrate(),
            duration_seconds: self.output_frames as f64 / f64::from(rate),
            loudness_lufs: measured.integrated_lufs,
            true_peak_db: measured.true_peak_db,
            clipped_samples: self.clipped,
            limited_samples: self.limiter.as_ref().map_or(0, Limiter::limited),
        })
    }

    /// Writes the header, once.
    fn start(&mut self, out: &mut Vec<u8>) -> Result<(), RenderError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let rate = self.spec.output_rate;
        match &mut self.encoder {
            Encoder::Wav => out.extend_from_slice(&wav::pcm_header(rate, self.output_frames)?),
            Encoder::Mulaw => out.extend_from_slice(&wav::mulaw_header(rate, self.output_frames)?),
            Encoder::Flac(e) => e.start(out),
            Encoder::Mp3(_) => {
                let kbps = self.spec.bitrate().unwrap_or(64);
                out.extend_from_slice(&mp3::info_frame(rate, kbps, self.output_frames)?);
            }
            Encoder::Ogg(e) => e.start(out)?,
        }
        Ok(())
    }

    /// Gain, limiter, 16 bits, encoder: for what the resampler just gave
    /// (and, when `last`, what the limiter still holds).
    fn encode(&mut self, out: &mut Vec<u8>, last: bool) -> Result<(), RenderError> {
        let gain = self.gain;
        let levels = match &mut self.limiter {
            Some(limiter) => {
                self.resampled.iter_mut().for_each(|s| *s *= gain);
                self.limited.clear();
                limiter.push(&self.resampled, &mut self.limited);
                if last {
                    limiter.finish(&mut self.limited);
                }
                &self.limited
            }
            None => {
                self.resampled.iter_mut().for_each(|s| *s *= gain);
                &self.resampled
            }
        };
        self.samples.clear();
        let mut clipped = 0u64;
        self.samples.extend(levels.iter().map(|&s| {
            let v = (s * 32768.0).round();
            if !(-32768.0..=32767.0).contains(&v) {
                clipped += 1;
            }
            // `as` saturates.
            v as i16
        }));
        self.clipped += clipped;
        let samples = &self.samples;
        match &mut self.encoder {
            Encoder::Wav => {
                self.meter.add_i16(samples)?;
                wav::pcm_samples(samples, out);
            }
            Encoder::Mulaw => {
                self.bytes.clear();
                self.bytes
                    .extend(samples.iter().map(|&s| wav::mulaw_encode(s)));
                out.extend_from_slice(&self.bytes);
                // What a decoder gets back.
                self.samples.clear();
                self.samples
                    .extend(self.bytes.iter().map(|&b| wav::mulaw_decode(b)));
                self.meter.add_i16(&self.samples)?;
            }
            Encoder::Flac(e) => {
                self.meter.add_i16(samples)?;
                e.push(samples, out)?;
            }
            Encoder::Mp3(e) => e.push(samples, out)?,
            Encoder::Ogg(e) => e.push(samples, out)?,
        }
        Ok(())
    }
}
