//! Loudness: EBU R128 / ITU-R BS.1770 integrated loudness and true peak with
//! the `ebur128` crate, the first pass of normalisation ([`Meter`]) and the
//! one gain it leads to ([`gain_db`]).

use ebur128::{EbuR128, Mode};

use super::RenderError;
use super::resample::Resampler;
use crate::deliverable::LoudnessTarget;

/// Headroom kept under the true-peak ceiling for lossy formats: decoding an
/// MP3 or Opus stream raises the true peak by about 0.5–1 dB.
pub const LOSSY_MARGIN_DB: f64 = 1.0;

/// What a programme measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Integrated loudness, LUFS; `None` when it is −∞ (silence, or less
    /// than one 400 ms gating block).
    pub integrated_lufs: Option<f64>,
    /// Highest true peak, dBTP; `None` for digital silence.
    pub true_peak_db: Option<f64>,
}

/// An integrated-loudness and true-peak meter at one rate (mono).
pub(crate) struct LoudnessMeter {
    state: EbuR128,
}

impl LoudnessMeter {
    pub(crate) fn new(rate: u32) -> Result<Self, RenderError> {
        // HISTOGRAM keeps the gating state bounded (1000 bins) whatever the
        // length, at 0.1 LU resolution, as ffmpeg's filter does.
        let state = EbuR128::new(1, rate, Mode::I | Mode::TRUE_PEAK | Mode::HISTOGRAM)
            .map_err(|e| RenderError::Meter(format!("{e:?} (rate {rate} Hz)")))?;
        Ok(LoudnessMeter { state })
    }

    pub(crate) fn add_f32(&mut self, samples: &[f32]) -> Result<(), RenderError> {
        self.state
            .add_frames_f32(samples)
            .map_err(|e| RenderError::Meter(format!("{e:?}")))
    }

    pub(crate) fn add_i16(&mut self, samples: &[i16]) -> Result<(), RenderError> {
        self.state
            .add_frames_i16(samples)
            .map_err(|e| RenderError::Meter(format!("{e:?}")))
    }

    pub(crate) fn measured(&self) -> Result<Measured, RenderError> {
        let lufs = self
            .state
            .loudness_global()
            .map_err(|e| RenderError::Meter(format!("{e:?}")))?;
        let peak = self
            .state
            .true_peak(0)
            .map_err(|e| RenderError::Meter(format!("{e:?}")))?;
        let peak_db = 20.0 * peak.log10();
        Ok(Measured {
            integrated_lufs: lufs.is_finite().then_some(lufs),
            true_peak_db: peak_db.is_finite().then_some(peak_db),
        })
    }
}

/// Pass 1 of loudness normalisation: measures the programme at the output
/// rate, resampled exactly as [`super::Render`] resamples it, before any gain
/// or encoding. Memory is bounded whatever the length.
pub struct Meter {
    resampler: Resampler,
    meter: LoudnessMeter,
    scratch: Vec<f32>,
}

impl Meter {
    pub fn new(input_rate: u32, output_rate: u32) -> Result<Self, RenderError> {
        Ok(Meter {
            resampler: Resampler::new(input_rate, output_rate)?,
            meter: LoudnessMeter::new(output_rate)?,
            scratch: Vec::new(),
        })
    }

    /// Adds mono 16-bit PCM at the input rate, in chunks of any size.
    pub fn push(&mut self, pcm: &[i16]) -> Result<(), RenderError> {
        for block in pcm.chunks(super::BLOCK) {
            self.scratch.clear();
            self.resampler.push(block, &mut self.scratch)?;
            self.meter.add_f32(&self.scratch)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Measured, RenderError> {
        self.scratch.clear();
        self.resampler.finish(&mut self.scratch)?;
        self.meter.add_f32(&self.scratch)?;
        self.meter.measured()
    }
}

/// The one gain (dB) that normalises a programme:
/// `min(target − loudness, ceiling − margin − true peak)`, where the margin
/// is [`LOSSY_MARGIN_DB`] for lossy formats (their decoded true peak is
/// higher than the PCM's) and 0 otherwise; 0 when the loudness cannot be
/// measured (silence, under 400 ms).
///
/// There is no limiter: the gain is capped so that the true-peak ceiling
/// holds, so a peaky programme (a high peak-to-loudness ratio) ends up
/// quieter than its target rather than clipped or compressed.
pub fn gain_db(measured: &Measured, target: &LoudnessTarget, lossy: bool) -> f64 {
    let Some(lufs) = measured.integrated_lufs else {
        return 0.0;
    };
    let to_target = target.lufs - lufs;
    let margin = if lossy { LOSSY_MARGIN_DB } else { 0.0 };
    match measured.true_peak_db {
        Some(peak) => to_target.min(target.true_peak_db - margin - peak),
        None => to_target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> LoudnessTarget {
        LoudnessTarget {
            lufs: -16.0,
            true_peak_db: -1.0,
        }
    }

    #[test]
    fn gain_reaches_the_target_when_the_peak_allows() {
        let m = Measured {
            integrated_lufs: Some(-24.0),
            true_peak_db: Some(-12.0),
        };
        assert_eq!(gain_db(&m, &target(), false), 8.0);
        assert_eq!(gain_db(&m, &target(), true), 8.0);
    }

    #[test]
    fn gain_is_capped_by_the_ceiling() {
        let m = Measured {
            integrated_lufs: Some(-24.0),
            true_peak_db: Some(-3.0),
        };
        assert_eq!(gain_db(&m, &target(), false), 2.0);
        assert_eq!(gain_db(&m, &target(), true), 1.0);
        // A gain may be negative: a loud programme is turned down.
        let loud = Measured {
            integrated_lufs: Some(-8.0),
            true_peak_db: Some(0.5),
        };
        assert_eq!(gain_db(&loud, &target(), false), -8.0);
    }

    #[test]
    fn silence_gets_no_gain() {
        let m = Measured {
            integrated_lufs: None,
            true_peak_db: None,
        };
        assert_eq!(gain_db(&m, &target(), true), 0.0);
    }

    #[test]
    fn silence_measures_as_none() {
        let mut meter = Meter::new(24_000, 16_000).expect("meter");
        meter.push(&vec![0i16; 48_000]).expect("push");
        let m = meter.finish().expect("finish");
        assert_eq!(m.integrated_lufs, None);
        assert_eq!(m.true_peak_db, None);
    }
}
