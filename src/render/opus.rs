//! Opus in Ogg (RFC 7845): libopus (the `opus` crate) codes 20 ms packets;
//! the `OpusHead` and `OpusTags` packets are written here and the pages by
//! the `ogg` crate.
//!
//! Application: `Audio`, not `Voip`. Both code speech well at these
//! bitrates, but `Voip` optimises intelligibility for calls (it high-passes
//! and reshapes the signal) while `Audio` aims at a decoded signal as close
//! as possible to the input, which is what a delivered recording (podcast,
//! audiobook, web player) wants, and what `opusenc` uses.
//!
//! Speed (the goal is ≥ 100× real time on one core): complexity
//! [`COMPLEXITY`] (libopus defaults to 9), and no signal hint. From
//! complexity 7 up libopus runs its signal analysis (a speech/music
//! classifier) on every frame; hinting `Signal::Voice` forces SILK/hybrid
//! coding. Each costs about 4× the whole encode: measured here (48 kHz mono,
//! 32 kbit/s, CPU time, libopus 1.6 at -O3) ≈ 330× real time at 6 without a
//! hint, ≈ 87× at 6 with the voice hint, ≈ 65× at 9 with it. Without them
//! libopus still picks its mode by bitrate and bandwidth (SILK for
//! narrowband and low bitrates, CELT above), and keeps its coding tools.
//!
//! Timing: granule positions count 48 kHz samples whatever the coding rate;
//! the pre-skip is the encoder's lookahead; the encoder is fed silence past
//! the end until the lookahead is out, and the last page (flagged
//! end-of-stream) carries the granule `pre-skip + frames × 48000 / rate`, so
//! decoders trim the padding and give exactly the programme's length.

use ::opus::{Application, Bitrate, Channels, Decoder, Encoder};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use super::RenderError;
use super::loudness::{LoudnessMeter, Measured};

/// The logical stream's serial number: any; fixed, so a render is
/// reproducible.
const SERIAL: u32 = 0x7474_7377;
/// Packets per page (1 s): bounds the page latency and buffering.
const PACKETS_PER_PAGE: u64 = 50;
/// libopus's encoder complexity (0–10); see the module doc.
const COMPLEXITY: i32 = 6;
/// Largest packet libopus may produce (RFC 6716 §3.4: 1275 bytes per frame).
const MAX_PACKET: usize = 1275 * 3 + 7;

fn opus_error(what: &str, e: ::opus::Error) -> RenderError {
    RenderError::Opus(format!("{what}: {e}"))
}

pub(crate) struct OggOpusEncoder {
    encoder: Encoder,
    /// 20 ms at the coding rate.
    frame: usize,
    /// 48 kHz samples per sample at the coding rate.
    scale: u64,
    lookahead: u64,
    /// Programme samples at the coding rate.
    total: u64,
    /// Samples given to the encoder, including the padding.
    fed: u64,
    pending: Vec<i16>,
    packet: Vec<u8>,
    /// The last packet, held back until it is known whether it ends the
    /// stream.
    held: Option<Vec<u8>>,
    packets: u64,
    writer: PacketWriter<'static, Vec<u8>>,
    /// Decodes every packet again for the meter.
    decoder: Decoder,
    decoded: Vec<f32>,
    /// Decoded samples seen so far (pre-skip included).
    decoded_count: u64,
    meter: LoudnessMeter,
}

impl OggOpusEncoder {
    pub(crate) fn new(rate: u32, bitrate_kbps: u32, total: u64) -> Result<Self, RenderError> {
        let mut encoder = Encoder::new(rate, Channels::Mono, Application::Audio)
            .map_err(|e| opus_error("encoder", e))?;
        let bits = i32::try_from(u64::from(bitrate_kbps) * 1000)
            .map_err(|_| RenderError::Opus(format!("bitrate {bitrate_kbps} kbit/s")))?;
        encoder
            .set_bitrate(Bitrate::Bits(bits))
            .map_err(|e| opus_error("bitrate", e))?;
        encoder
            .set_complexity(COMPLEXITY)
            .map_err(|e| opus_error("complexity", e))?;
        let lookahead = encoder
            .get_lookahead()
            .map_err(|e| opus_error("lookahead", e))?;
        let lookahead = u64::try_from(lookahead)
            .map_err(|_| RenderError::Opus(format!("lookahead {lookahead}")))?;
        if 48_000 % rate != 0 {
            return Err(RenderError::Opus(format!("{rate} Hz is not an Opus rate")));
        }
        let scale = u64::from(48_000 / rate);
        let frame = rate as usize / 50;
        Ok(OggOpusEncoder {
            encoder,
            frame,
            scale,
            lookahead,
            total,
            fed: 0,
            pending: Vec::with_capacity(frame),
            packet: vec![0; MAX_PACKET],
            held: None,
            packets: 0,
            writer: PacketWriter::new(Vec::new()),
            decoder: Decoder::new(rate, Channels::Mono).map_err(|e| opus_error("decoder", e))?,
            // 120 ms, the longest packet.
            decoded: vec![0.0; rate as usize * 120 / 1000],
            decoded_count: 0,
            meter: LoudnessMeter::new(rate)?,
        })
    }

    fn pre_skip(&self) -> u64 {
        self.lookahead * self.scale
    }

    /// The two header pages: `OpusHead` and `OpusTags`, each alone on its page.
    pub(crate) fn start(&mut self, out: &mut Vec<u8>) -> Result<(), RenderError> {
        let pre_skip = u16::try_from(self.pre_skip())
            .map_err(|_| RenderError::Opus(format!("pre-skip {}", self.pre_skip())))?;
        let rate = u32::try_from(self.scale)
            .map(|s| 48_000 / s)
            .unwrap_or(48_000);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(1); // channels
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&rate.to_le_bytes()); // input sample rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family 0: mono/stereo
        self.write(head, PacketWriteEndInfo::EndPage, 0, out)?;
        let vendor = format!("tts-worker (libopus {})", ::opus::version());
        let mut tags = Vec::with_capacity(16 + vendor.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no comments
        self.write(tags, PacketWriteEndInfo::EndPage, 0, out)
    }

    pub(crate) fn push(&mut self, samples: &[i16], out: &mut Vec<u8>) -> Result<(), RenderError> {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (self.frame - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.frame {
                self.encode(out)?;
            }
        }
        Ok(())
    }

    /// Pads with silence until the lookahead is out, ends the stream and
    /// returns the loudness of the decoded programme.
    pub(crate) fn finish(mut self, out: &mut Vec<u8>) -> Result<Measured, RenderError> {
        let needed = self.total + self.lookahead;
        while self.fed + (self.pending.len() as u64) < needed || !self.pending.is_empty() {
            self.pending.resize(self.frame, 0);
            self.encode(out)?;
        }
        let last = self.held.take().unwrap_or_default();
        let granule = self.pre_skip() + self.total * self.scale;
        self.write(last, PacketWriteEndInfo::EndStream, granule, out)?;
        self.meter.measured()
    }

    /// Encodes the pending frame.
    fn encode(&mut self, out: &mut Vec<u8>) -> Result<(), RenderError> {
        let len = self
            .encoder
            .encode(&self.pending, &mut self.packet)
            .map_err(|e| opus_error("encode", e))?;
        self.fed += self.pending.len() as u64;
        self.pending.clear();
        let packet = self.packet[..len].to_vec();
        self.meter_packet(&packet)?;
        if let Some(previous) = self.held.replace(packet) {
            self.packets += 1;
            let end = if self.packets % PACKETS_PER_PAGE == 0 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            let granule = self.packets * self.frame as u64 * self.scale;
            self.write(previous, end, granule, out)?;
        }
        Ok(())
    }

    /// Decodes a packet as a player would and meters the programme part of
    /// it: after the pre-skip, up to the end.
    fn meter_packet(&mut self, packet: &[u8]) -> Result<(), RenderError> {
        let n = self
            .decoder
            .decode_float(packet, &mut self.decoded, false)
            .map_err(|e| opus_error("decoding it again", e))?;
        let from = self.decoded_count;
        self.decoded_count += n as u64;
        let start = self.lookahead.saturating_sub(from).min(n as u64) as usize;
        let end = (self.lookahead + self.total)
            .saturating_sub(from)
            .min(n as u64) as usize;
        if start < end {
            self.meter.add_f32(&self.decoded[start..end])?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        packet: Vec<u8>,
        end: PacketWriteEndInfo,
        granule: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), RenderError> {
        self.writer
            .write_packet(packet, SERIAL, end, granule)
            .map_err(|e| RenderError::Opus(format!("ogg: {e}")))?;
        let pages = self.writer.inner_mut();
        out.extend_from_slice(pages);
        pages.clear();
        Ok(())
    }
}
