//! Loudness: EBU R128 / ITU-R BS.1770 integrated loudness and true peak with
//! the `ebur128` crate, the first pass of normalisation ([`Meter`]) and the
//! one gain it leads to ([`gain_db`]).

use ebur128::{EbuR128, Mode};

use super::RenderError;
use super::resample::Resampler;
use crate::deliverable::{Format, LoudnessTarget};
use tts_true_peak::{Limiter, PeakMeter};

/// Headroom kept under the true-peak ceiling for a format (dB): decoding
/// raises the true peak of an MP3 by about 0.5–1 dB, of an Opus stream by
/// up to 1.5 dB on limited transients (measured with ffmpeg on close-miked
/// speech at −16 LUFS); PCM formats deliver the samples written.
pub fn decoded_peak_margin_db(format: Format) -> f64 {
    match format {
        Format::Mp3 => 1.0,
        Format::Ogg => 2.0,
        Format::Wav | Format::Mulaw | Format::Flac => 0.0,
    }
}

/// What a programme measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Integrated loudness, LUFS; `None` when it is −∞ (silence, or less
    /// than one 400 ms gating block).
    pub integrated_lufs: Option<f64>,
    /// Highest true peak, dBTP; `None` for digital silence.
    pub true_peak_db: Option<f64>,
}

/// An integrated-loudness (`ebur128`) and true-peak meter at one rate
/// (mono). The true peak is read as the limiter reads it, oversampled to at
/// least 192 kHz like ffmpeg's meter: the `ebur128` crate's 4× reading is up
/// to ≈ 0.5 dB higher on sibilants near Nyquist at 24 kHz (measured against
/// ffmpeg), and the event must not report a ceiling the file keeps as
/// broken.
pub(crate) struct LoudnessMeter {
    state: EbuR128,
    peak: PeakMeter,
}

impl LoudnessMeter {
    pub(crate) fn new(rate: u32) -> Result<Self, RenderError> {
        // HISTOGRAM keeps the gating state bounded (1000 bins) whatever the
        // length, at 0.1 LU resolution, as ffmpeg's filter does.
        let state = EbuR128::new(1, rate, Mode::I | Mode::HISTOGRAM)
            .map_err(|e| RenderError::Meter(format!("{e:?} (rate {rate} Hz)")))?;
        Ok(LoudnessMeter {
            state,
            peak: PeakMeter::new(rate),
        })
    }

    pub(crate) fn add_f32(&mut self, samples: &[f32]) -> Result<(), RenderError> {
        self.peak.add(samples.iter().copied());
        self.state
            .add_frames_f32(samples)
            .map_err(|e| RenderError::Meter(format!("{e:?}")))
    }

    pub(crate) fn add_i16(&mut self, samples: &[i16]) -> Result<(), RenderError> {
        self.peak
            .add(samples.iter().map(|&s| f32::from(s) / 32768.0));
        self.state
            .add_frames_i16(samples)
            .map_err(|e| RenderError::Meter(format!("{e:?}")))
    }

    pub(crate) fn measured(&self) -> Result<Measured, RenderError> {
        let lufs = self
            .state
            .loudness_global()
            .map_err(|e| RenderError::Meter(format!("{e:?}")))?;
        let peak_db = 20.0 * f64::from(self.peak.peak()).log10();
        Ok(Measured {
            integrated_lufs: lufs.is_finite().then_some(lufs),
            true_peak_db: peak_db.is_finite().then_some(peak_db),
        })
    }
}

/// Pass 1 of loudness normalisation: measures the programme at the output
/// rate, resampled exactly as [`super::Render`] resamples it, before any gain
/// or encoding ([`Meter::new`]), or through a gain and the limiter
/// ([`Meter::limited`]: what the limiter takes off). Memory is bounded
/// whatever the length.
pub struct Meter {
    resampler: Resampler,
    meter: LoudnessMeter,
    scratch: Vec<f32>,
    /// The linear gain and the limiter after it.
    limiter: Option<(f32, Box<Limiter>)>,
    limited: Vec<f32>,
}

impl Meter {
    pub fn new(input_rate: u32, output_rate: u32) -> Result<Self, RenderError> {
        Ok(Meter {
            resampler: Resampler::new(input_rate, output_rate)?,
            meter: LoudnessMeter::new(output_rate)?,
            scratch: Vec::new(),
            limiter: None,
            limited: Vec::new(),
        })
    }

    /// Meters the programme as [`super::Render`] delivers it with this
    /// gain and ceiling, before encoding.
    pub fn limited(
        input_rate: u32,
        output_rate: u32,
        gain_db: f64,
        ceiling_db: f64,
    ) -> Result<Self, RenderError> {
        let mut meter = Meter::new(input_rate, output_rate)?;
        meter.limiter = Some((
            10f64.powf(gain_db / 20.0) as f32,
            Box::new(Limiter::new(output_rate, ceiling_db)),
        ));
        Ok(meter)
    }

    /// Adds mono 16-bit PCM at the input rate, in chunks of any size.
    pub fn push(&mut self, pcm: &[i16]) -> Result<(), RenderError> {
        for block in pcm.chunks(super::BLOCK) {
            self.scratch.clear();
            self.resampler.push(block, &mut self.scratch)?;
            self.add(false)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Measured, RenderError> {
        self.scratch.clear();
        self.resampler.finish(&mut self.scratch)?;
        self.add(true)?;
        self.meter.measured()
    }

    fn add(&mut self, last: bool) -> Result<(), RenderError> {
        match &mut self.limiter {
            None => self.meter.add_f32(&self.scratch),
            Some((gain, limiter)) => {
                let gain = *gain;
                self.scratch.iter_mut().for_each(|s| *s *= gain);
                self.limited.clear();
                limiter.push(&self.scratch, &mut self.limited);
                if last {
                    limiter.finish(&mut self.limited);
                }
                self.meter.add_f32(&self.limited)
            }
        }
    }
}

/// Whether `gain` takes the programme `source` over `ceiling_db`: the
/// limiter will shave its peaks (and take some loudness with them).
pub fn limits(source: &Measured, gain_db: f64, ceiling_db: f64) -> bool {
    source
        .true_peak_db
        .is_some_and(|peak| peak + gain_db > ceiling_db)
}

/// The gain that makes up for the loudness the limiter took, from the
/// gains tried so far and what the programme measured through each and the
/// limiter (`tried`, in order; [`Meter::limited`]). The first guess adds
/// the shortfall; later ones follow the slope between the last two tries
/// (more gain, more limiting: less than 1 LU per dB). `None` when the last
/// try is within 0.2 dB of it; never past [`MAX_LIMITING_DB`] of limiting.
pub fn made_up_gain(
    source: &Measured,
    tried: &[(f64, Measured)],
    target: &LoudnessTarget,
    format: Format,
) -> Option<f64> {
    let (gain, through) = tried.last()?;
    let short = target.lufs - through.integrated_lufs?;
    let slope = match tried {
        [.., (g0, m0), (g1, m1)] if (g1 - g0).abs() > 0.01 => {
            let (l0, l1) = (m0.integrated_lufs?, m1.integrated_lufs?);
            ((l1 - l0) / (g1 - g0)).clamp(0.2, 1.0)
        }
        _ => 1.0,
    };
    let bound = ceiling_db(target, format) - source.true_peak_db? + MAX_LIMITING_DB;
    let next = (gain + short / slope).min(bound);
    ((next - gain).abs() > 0.2).then_some(next)
}

/// The most the limiter may take off a programme's peaks (dB). Speech
/// close to the microphone reads 18–25 dB between its true peak and its
/// loudness; −16 LUFS under −1 dBTP leaves 15 (13 for Opus, its margin
/// kept), and what the limiter takes off the loudness is made up with
/// more gain, so up to 12 dB of limiting serve such voices. Past this, a
/// programme of stray clicks ends under its target rather than squashed
/// (the event reports its loudness).
pub const MAX_LIMITING_DB: f64 = 15.0;

/// Passes that measure the programme through the limiter to make up the
/// loudness it took (each reads the programme once more).
pub const MAKE_UP_PASSES: usize = 3;

/// The true-peak ceiling (dBTP) the limiter holds on the PCM: the
/// target's, less the format's [`decoded_peak_margin_db`].
pub fn ceiling_db(target: &LoudnessTarget, format: Format) -> f64 {
    target.true_peak_db - decoded_peak_margin_db(format)
}

/// The one gain (dB) that normalises a programme, before the limiter:
/// `target − loudness`, at most [`MAX_LIMITING_DB`] above what keeps the
/// true peak under [`ceiling_db`] without a limiter; 0 when the loudness
/// cannot be measured (silence, under 400 ms).
pub fn gain_db(measured: &Measured, target: &LoudnessTarget, format: Format) -> f64 {
    let Some(lufs) = measured.integrated_lufs else {
        return 0.0;
    };
    let to_target = target.lufs - lufs;
    match measured.true_peak_db {
        Some(peak) => to_target.min(ceiling_db(target, format) - peak + MAX_LIMITING_DB),
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
        assert_eq!(gain_db(&m, &target(), Format::Wav), 8.0);
        assert_eq!(gain_db(&m, &target(), Format::Mp3), 8.0);
    }

    #[test]
    fn gain_leaves_the_peaks_to_the_limiter_within_its_bound() {
        // 8 dB to the target, 2 dB of peak room: the limiter takes 6.
        let m = Measured {
            integrated_lufs: Some(-24.0),
            true_peak_db: Some(-3.0),
        };
        assert_eq!(gain_db(&m, &target(), Format::Wav), 8.0);
        // Clicks 30 dB over the loudness: at most 12 dB of limiting.
        let clicks = Measured {
            integrated_lufs: Some(-40.0),
            true_peak_db: Some(-9.0),
        };
        assert_eq!(
            gain_db(&clicks, &target(), Format::Flac),
            8.0 + MAX_LIMITING_DB
        );
        assert_eq!(
            gain_db(&clicks, &target(), Format::Mp3),
            7.0 + MAX_LIMITING_DB
        );
        assert_eq!(ceiling_db(&target(), Format::Mp3), -2.0);
        assert_eq!(ceiling_db(&target(), Format::Ogg), -3.0);
        // A gain may be negative: a loud programme is turned down.
        let loud = Measured {
            integrated_lufs: Some(-8.0),
            true_peak_db: Some(0.5),
        };
        assert_eq!(gain_db(&loud, &target(), Format::Wav), -8.0);
    }

    #[test]
    fn silence_gets_no_gain() {
        let m = Measured {
            integrated_lufs: None,
            true_peak_db: None,
        };
        assert_eq!(gain_db(&m, &target(), Format::Mp3), 0.0);
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
