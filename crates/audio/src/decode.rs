//! The decode pipeline: probe, pick the audio track, decode packets, downmix, resample.

use std::path::Path;
use std::sync::LazyLock;

use symphonia::core::audio::conv::FromSample;
use symphonia::core::audio::sample::Sample;
use symphonia::core::audio::{Audio, AudioBuffer, GenericAudioBufferRef};
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::resample::MonoResampler;
use crate::tags::TagCollector;
use crate::{AudioError, DecodeOptions, Decoded, Tags};

/// Source and target rates outside this range are refused: real audio lives well inside it, and
/// a hostile header claiming billions of hertz must not size the resampler's FFT buffers.
pub(crate) const RATE_RANGE_HZ: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Upper bound on what we pre-reserve for the output from header-declared lengths (32 MB, about
/// 8 minutes at 16 kHz); longer files simply grow the vector as audio actually arrives, so a
/// lying header cannot make us allocate more than this up front.
const MAX_RESERVE_SAMPLES: u64 = 8 * 1024 * 1024;

/// Samples are clipped to +-this after downmixing. Float formats carry any finite value, and
/// a damaged or hostile float file can hold values near f32::MAX, which the resampler's and
/// the spectrogram's sums overflow to infinity and then NaN. No recording goes anywhere near
/// +36 dBFS (64x full scale), so real audio is never touched.
const MAX_ABS_SAMPLE: f32 = 64.0;

/// A chained Ogg stream resets the decoder once per link; more links than this are not music.
const MAX_RESETS: u32 = 10_000;

/// Symphonia's decoders plus libopus, built once.
static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
    let mut registry = CodecRegistry::new();
    symphonia::default::register_enabled_codecs(&mut registry);
    registry.register_audio_decoder::<symphonia_adapter_libopus::OpusDecoder>();
    registry
});

/// Decodes everything `mss` holds, or fails with a user-facing error.
pub(crate) fn decode_stream(
    mss: MediaSourceStream<'_>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
) -> Result<(Decoded, Tags), AudioError> {
    validate_options(opts)?;
    // A decoder bug on hostile input must surface as an error for that one file, not take the
    // whole indexing run down with it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_stream_inner(mss, ext_hint, opts)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(AudioError::Malformed {
            reason: format!("the decoder crashed on this data ({what})"),
        })
    })
}

fn validate_options(opts: &DecodeOptions) -> Result<(), AudioError> {
    if !RATE_RANGE_HZ.contains(&opts.target_rate_hz) {
        return Err(AudioError::InvalidOptions {
            reason: format!(
                "target_rate_hz {} is outside {}..={} Hz",
                opts.target_rate_hz,
                RATE_RANGE_HZ.start(),
                RATE_RANGE_HZ.end()
            ),
        });
    }
    if opts.max_duration_s.is_nan() || opts.max_duration_s <= 0.0 {
        return Err(AudioError::InvalidOptions {
            reason: format!("max_duration_s {} must be positive", opts.max_duration_s),
        });
    }
    Ok(())
}

/// Per-stream state of the decode loop.
struct Pipeline<'o> {
    opts: &'o DecodeOptions,
    samples: Vec<f32>,
    resampler: Option<MonoResampler>,
    /// Rate the current resampler was built for.
    current_rate_hz: u32,
    /// Rate of the first decoded audio, reported as `source_rate_hz`.
    first_rate_hz: Option<u32>,
    channels: Option<u16>,
    /// Source audio consumed so far, summed per rate segment, in seconds.
    consumed_s: f64,
    /// Frames consumed in the current rate segment.
    segment_frames: u64,
}

impl Pipeline<'_> {
    /// Downmixes one decoded buffer and feeds it through the resampler.
    fn push(&mut self, buf: &GenericAudioBufferRef<'_>) -> Result<(), AudioError> {
        let frames = buf.frames();
        if frames == 0 {
            return Ok(());
        }
        let rate_hz = buf.spec().rate();
        if !RATE_RANGE_HZ.contains(&rate_hz) {
            return Err(AudioError::Unsupported {
                reason: format!("sample rate {rate_hz} Hz"),
            });
        }
        // Check the duration limit before producing anything, so a stream that never ends
        // costs at most `max_duration_s` worth of memory.
        let segment_s = if self.current_rate_hz > 0 {
            self.segment_frames as f64 / f64::from(self.current_rate_hz)
        } else {
            0.0
        };
        let after_s = self.consumed_s + segment_s + frames as f64 / f64::from(rate_hz);
        if after_s > self.opts.max_duration_s {
            return Err(AudioError::TooLong {
                limit_s: self.opts.max_duration_s,
            });
        }
        if self.resampler.is_none() || rate_hz != self.current_rate_hz {
            self.switch_rate(rate_hz)?;
        }
        self.segment_frames += frames as u64;
        self.first_rate_hz.get_or_insert(rate_hz);
        self.channels
            .get_or_insert(u16::try_from(buf.num_planes()).unwrap_or(u16::MAX));

        let Some(resampler) = self.resampler.as_mut() else {
            return Err(AudioError::Internal {
                reason: "resampler missing after initialisation".to_owned(),
            });
        };
        if resampler.is_passthrough() {
            downmix(buf, &mut self.samples);
        } else {
            downmix(buf, resampler.input());
            resampler.process_ready(&mut self.samples)?;
        }
        Ok(())
    }

    /// Flushes the resampler of the previous rate (if any) and starts one for `rate_hz`.
    fn switch_rate(&mut self, rate_hz: u32) -> Result<(), AudioError> {
        if let Some(old) = self.resampler.take() {
            old.finish(&mut self.samples)?;
            self.consumed_s += self.segment_frames as f64 / f64::from(self.current_rate_hz);
            self.segment_frames = 0;
        }
        self.resampler = Some(MonoResampler::new(rate_hz, self.opts.target_rate_hz)?);
        self.current_rate_hz = rate_hz;
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        if let Some(r) = self.resampler.take() {
            r.finish(&mut self.samples)?;
        }
        Ok(self.samples)
    }
}

fn decode_stream_inner(
    mss: MediaSourceStream<'_>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
) -> Result<(Decoded, Tags), AudioError> {
    let mut hint = Hint::new();
    if let Some(ext) = ext_hint {
        hint.with_extension(&ext.to_ascii_lowercase());
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(_) => AudioError::Unsupported {
                reason: "not a recognised audio container".to_owned(),
            },
            other => map_error(other, "reading the container header"),
        })?;

    let mut tags = TagCollector::default();
    collect_all_metadata(format.as_mut(), &mut tags);

    let OpenedTrack {
        id: mut track_id,
        mut decoder,
        declared,
    } = open_track(format.as_ref())?;
    let codec = decoder.codec_info().short_name.to_owned();

    let mut pipeline = Pipeline {
        opts,
        samples: Vec::new(),
        resampler: None,
        current_rate_hz: 0,
        first_rate_hz: None,
        channels: None,
        consumed_s: 0.0,
        segment_frames: 0,
    };
    if let Some((frames, rate_hz)) = declared.filter(|&(_, r)| r > 0) {
        let at_target = frames.saturating_mul(u64::from(opts.target_rate_hz)) / u64::from(rate_hz);
        let reserve = at_target.min(MAX_RESERVE_SAMPLES);
        pipeline
            .samples
            .reserve(usize::try_from(reserve).unwrap_or(0));
    }

    let mut decoded_packets = 0u64;
    let mut failed_packets = 0u64;
    let mut last_decode_error: Option<String> = None;
    let mut resets = 0u32;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymError::ResetRequired) => {
                // A new chained-Ogg link (or similar) changed the track list: rebuild the
                // decoder and keep going, as symphonia intends.
                resets += 1;
                match open_track(format.as_ref()) {
                    Ok(next) if resets <= MAX_RESETS => {
                        (track_id, decoder) = (next.id, next.decoder)
                    }
                    Err(e) if decoded_packets == 0 => return Err(e),
                    // Too many links, or a later link we cannot decode: keep what we have.
                    _ => break,
                }
                continue;
            }
            // A truncated file just ends early: keep what decoded so far.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                // Corruption the demuxer cannot skip: return what we have if there is anything,
                // since a partially readable file is still useful for identification.
                if decoded_packets == 0 {
                    return Err(map_error(e, "reading packets"));
                }
                break;
            }
        };

        if !format.metadata().is_latest() {
            collect_all_metadata(format.as_mut(), &mut tags);
        }
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(buf) => {
                decoded_packets += 1;
                pipeline.push(&buf)?;
            }
            // A corrupt packet: skip it and carry on, as symphonia intends.
            Err(SymError::DecodeError(msg)) => {
                failed_packets += 1;
                last_decode_error = Some(msg.to_owned());
            }
            Err(SymError::IoError(e)) => {
                failed_packets += 1;
                last_decode_error = Some(e.to_string());
            }
            Err(SymError::ResetRequired) => {
                resets += 1;
                match open_track(format.as_ref()) {
                    Ok(next) if resets <= MAX_RESETS => {
                        (track_id, decoder) = (next.id, next.decoder)
                    }
                    Err(e) if decoded_packets == 0 => return Err(e),
                    _ => break,
                }
            }
            // Unrecoverable decoder errors: keep the audio before the failure, if any.
            Err(e) if decoded_packets == 0 => return Err(map_error(e, "decoding audio")),
            Err(_) => break,
        }
    }

    let source_rate_hz = pipeline.first_rate_hz;
    let channels = pipeline.channels;
    let mut samples = pipeline.finish()?;
    if samples.is_empty() {
        if failed_packets > 0 {
            return Err(AudioError::Malformed {
                reason: format!(
                    "all {failed_packets} audio packets failed to decode (last error: {})",
                    last_decode_error.as_deref().unwrap_or("unknown")
                ),
            });
        }
        return Err(AudioError::Empty);
    }
    // A header that over-declared the length left spare capacity behind; give it back.
    if samples.capacity() > samples.len() + samples.len() / 8 {
        samples.shrink_to_fit();
    }
    let rate_hz = opts.target_rate_hz;
    let decoded = Decoded {
        duration_s: samples.len() as f64 / f64::from(rate_hz),
        samples,
        rate_hz,
        source_rate_hz: source_rate_hz.unwrap_or(rate_hz),
        channels: channels.unwrap_or(1),
        codec,
    };
    Ok((decoded, tags.finish()))
}

/// Drains every metadata revision currently queued on the reader into `tags`.
fn collect_all_metadata(format: &mut dyn FormatReader, tags: &mut TagCollector) {
    let mut log = format.metadata();
    if let Some(rev) = log.current() {
        tags.add_revision(rev);
    }
    while log.pop().is_some() {
        if let Some(rev) = log.current() {
            tags.add_revision(rev);
        }
    }
}

/// The audio track chosen for decoding.
struct OpenedTrack {
    id: u32,
    decoder: Box<dyn AudioDecoder>,
    /// Declared length in frames and the sample rate, if the container states them; used only
    /// as a bounded allocation hint.
    declared: Option<(u64, u32)>,
}

/// Picks the first audio track we can decode and builds its decoder.
fn open_track(format: &dyn FormatReader) -> Result<OpenedTrack, AudioError> {
    let audio_tracks: Vec<&Track> = format
        .tracks()
        .iter()
        .filter(|t| matches!(t.codec_params, Some(CodecParameters::Audio(_))))
        .collect();
    if audio_tracks.is_empty() {
        return Err(AudioError::NoAudioTrack);
    }
    let mut last_error = None;
    for track in audio_tracks {
        let Some(CodecParameters::Audio(params)) = &track.codec_params else {
            continue;
        };
        match CODECS.make_audio_decoder(params, &AudioDecoderOptions::default()) {
            Ok(decoder) => {
                return Ok(OpenedTrack {
                    id: track.id,
                    decoder,
                    declared: track.num_frames.zip(params.sample_rate),
                });
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(SymError::Unsupported(what)) => AudioError::Unsupported {
            reason: format!("no decoder for this codec ({what})"),
        },
        Some(e) => map_error(e, "opening the audio decoder"),
        None => AudioError::NoAudioTrack,
    })
}

/// Translates a symphonia error into ours, naming the stage that failed.
fn map_error(e: SymError, stage: &str) -> AudioError {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioError::Malformed {
                reason: format!("unexpected end of data while {stage}"),
            }
        }
        SymError::IoError(io) => AudioError::Io {
            path: "<stream>".into(),
            source: io,
        },
        SymError::Unsupported(what) => AudioError::Unsupported {
            reason: format!("{what} (while {stage})"),
        },
        SymError::LimitError(what) => AudioError::Malformed {
            reason: format!("a safety limit was hit while {stage}: {what}"),
        },
        other => AudioError::Malformed {
            reason: format!("{other} (while {stage})"),
        },
    }
}

/// Appends the average of all channels of `buf` to `out`, as f32, with non-finite samples
/// replaced by silence and the rest clipped to [`MAX_ABS_SAMPLE`].
fn downmix(buf: &GenericAudioBufferRef<'_>, out: &mut Vec<f32>) {
    match buf {
        GenericAudioBufferRef::U8(b) => downmix_typed(b, out),
        GenericAudioBufferRef::U16(b) => downmix_typed(b, out),
        GenericAudioBufferRef::U24(b) => downmix_typed(b, out),
        GenericAudioBufferRef::U32(b) => downmix_typed(b, out),
        GenericAudioBufferRef::S8(b) => downmix_typed(b, out),
        GenericAudioBufferRef::S16(b) => downmix_typed(b, out),
        GenericAudioBufferRef::S24(b) => downmix_typed(b, out),
        GenericAudioBufferRef::S32(b) => downmix_typed(b, out),
        GenericAudioBufferRef::F32(b) => downmix_typed(b, out),
        GenericAudioBufferRef::F64(b) => downmix_typed(b, out),
    }
}

fn downmix_typed<S>(buf: &AudioBuffer<S>, out: &mut Vec<f32>)
where
    S: Sample,
    f32: FromSample<S>,
{
    let frames = buf.frames();
    let base = out.len();
    let mut planes = buf.iter_planes();
    let Some(first) = planes.next() else {
        return;
    };
    // The first plane initialises the output, the others accumulate onto it; planar buffers
    // make each pass a straight, vectorisable loop.
    out.extend(first.iter().map(|&s| f32::from_sample(s)));
    let dst = &mut out[base..base + frames];
    let mut count = 1usize;
    for plane in planes {
        for (d, &s) in dst.iter_mut().zip(plane) {
            *d += f32::from_sample(s);
        }
        count += 1;
    }
    let scale = 1.0 / count as f32;
    for d in dst.iter_mut() {
        let v = *d * scale;
        *d = if v.is_finite() {
            v.clamp(-MAX_ABS_SAMPLE, MAX_ABS_SAMPLE)
        } else {
            0.0
        };
    }
}

/// Decodes a file from disk; see [`crate::decode_file`].
pub(crate) fn decode_path(
    path: &Path,
    opts: &DecodeOptions,
) -> Result<(Decoded, Tags), AudioError> {
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let len_bytes = file.metadata().map_err(io_err)?.len();
    if len_bytes == 0 {
        return Err(AudioError::Empty);
    }
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let ext = path.extension().and_then(|e| e.to_str());
    decode_stream(mss, ext, opts).map_err(|e| match e {
        // Name the actual file rather than the placeholder used inside the pipeline.
        AudioError::Io { source, .. } => io_err(source),
        other => other,
    })
}
