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
use crate::{AudioError, DecodeOptions, Decoded, SampleSink, Tags};

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

/// Decodes everything `mss` holds, or fails with a user-facing error. With a `sink`,
/// resampling runs on a helper thread while this one decodes, and the sink sees the
/// output there, in order, as it is made.
pub(crate) fn decode_stream(
    mss: MediaSourceStream<'_>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
    sink: Option<&mut SampleSink<'_>>,
) -> Result<(Decoded, Tags), AudioError> {
    validate_options(opts)?;
    // A decoder bug on hostile input must surface as an error for that one file, not take the
    // whole indexing run down with it.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match sink {
        Some(sink) => decode_with_helper(mss, ext_hint, opts, sink),
        None => decode_inline(mss, ext_hint, opts),
    }))
    .unwrap_or_else(|panic| Err(panic_error(&panic)))
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

/// What the decode loop hands the downmixed audio to: [`Resampling`] on the same thread, or
/// [`ToHelper`], which passes it to a [`Resampling`] on a helper thread.
trait Downstream {
    /// Takes the next mono samples, at `rate_hz` (in [`RATE_RANGE_HZ`]).
    fn push(&mut self, rate_hz: u32, mono: &[f32]) -> Result<(), AudioError>;
    /// Room for about `samples` output samples, as the container declares them (bounded
    /// by the caller).
    fn reserve(&mut self, _samples: usize) {}
}

/// Per-stream state of the decode loop: what it has seen, and the duration limit.
struct Front<'o> {
    opts: &'o DecodeOptions,
    /// The current buffer, downmixed.
    mono: Vec<f32>,
    /// Rate of the current segment (0 before any audio).
    current_rate_hz: u32,
    /// Rate of the first decoded audio, reported as `source_rate_hz`.
    first_rate_hz: Option<u32>,
    channels: Option<u16>,
    /// Source audio consumed in earlier rate segments, in seconds.
    consumed_s: f64,
    /// Frames consumed in the current rate segment.
    segment_frames: u64,
}

impl<'o> Front<'o> {
    fn new(opts: &'o DecodeOptions) -> Self {
        Self {
            opts,
            mono: Vec::new(),
            current_rate_hz: 0,
            first_rate_hz: None,
            channels: None,
            consumed_s: 0.0,
            segment_frames: 0,
        }
    }

    /// Checks one decoded buffer against the limits, downmixes it and passes it on.
    fn push(
        &mut self,
        buf: &GenericAudioBufferRef<'_>,
        downstream: &mut dyn Downstream,
    ) -> Result<(), AudioError> {
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
        if rate_hz != self.current_rate_hz {
            self.consumed_s += segment_s;
            self.segment_frames = 0;
            self.current_rate_hz = rate_hz;
        }
        self.segment_frames += frames as u64;
        self.first_rate_hz.get_or_insert(rate_hz);
        self.channels
            .get_or_insert(u16::try_from(buf.num_planes()).unwrap_or(u16::MAX));
        self.mono.clear();
        downmix(buf, &mut self.mono);
        downstream.push(rate_hz, &self.mono)
    }
}

/// Resamples the downmixed audio to the target rate, a resampler per run of one source
/// rate, and shows each finished stretch of output to an optional sink.
struct Resampling<'s> {
    target_rate_hz: u32,
    samples: Vec<f32>,
    resampler: Option<MonoResampler>,
    /// Rate the current resampler was built for.
    current_rate_hz: u32,
    sink: Option<&'s mut SampleSink<'s>>,
    /// Samples already shown to the sink.
    shown: usize,
}

impl<'s> Resampling<'s> {
    fn new(target_rate_hz: u32, sink: Option<&'s mut SampleSink<'s>>) -> Self {
        Self {
            target_rate_hz,
            samples: Vec::new(),
            resampler: None,
            current_rate_hz: 0,
            sink,
            shown: 0,
        }
    }

    /// Flushes the resampler of the previous rate (if any) and starts one for `rate_hz`.
    fn switch_rate(&mut self, rate_hz: u32) -> Result<(), AudioError> {
        if let Some(old) = self.resampler.take() {
            old.finish(&mut self.samples)?;
        }
        self.resampler = Some(MonoResampler::new(rate_hz, self.target_rate_hz)?);
        self.current_rate_hz = rate_hz;
        Ok(())
    }

    /// Shows the sink the output it has not seen. What a resampler has appended is final:
    /// its flush only appends and trims what the flush itself added.
    fn show(&mut self) {
        if let Some(sink) = self.sink.as_mut()
            && self.samples.len() > self.shown
        {
            sink(&self.samples[self.shown..]);
            self.shown = self.samples.len();
        }
    }

    fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        if let Some(r) = self.resampler.take() {
            r.finish(&mut self.samples)?;
        }
        self.show();
        Ok(self.samples)
    }
}

impl Downstream for Resampling<'_> {
    fn reserve(&mut self, samples: usize) {
        self.samples.reserve(samples);
    }

    fn push(&mut self, rate_hz: u32, mono: &[f32]) -> Result<(), AudioError> {
        if self.resampler.is_none() || rate_hz != self.current_rate_hz {
            self.switch_rate(rate_hz)?;
        }
        let Some(resampler) = self.resampler.as_mut() else {
            return Err(AudioError::Internal {
                reason: "resampler missing after initialisation".to_owned(),
            });
        };
        if resampler.is_passthrough() {
            self.samples.extend_from_slice(mono);
        } else {
            resampler.input().extend_from_slice(mono);
            resampler.process_ready(&mut self.samples)?;
        }
        self.show();
        Ok(())
    }
}

/// Mono samples per message to the helper thread (128 KB): a few hundred messages for a
/// song, each worth one resampler call or more.
const HELPER_BATCH_SAMPLES: usize = 32 * 1024;
/// Messages that may wait for the helper thread: bounds the memory between the threads.
const HELPER_QUEUE: usize = 8;

/// Passes the downmixed audio to a helper thread in batches of one source rate.
struct ToHelper {
    tx: std::sync::mpsc::SyncSender<(u32, Vec<f32>)>,
    batch: Vec<f32>,
    batch_rate_hz: u32,
}

impl ToHelper {
    /// Sends the batch; an error means that the helper has stopped, and its own error is
    /// the one to report.
    fn flush(&mut self) -> Result<(), AudioError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(HELPER_BATCH_SAMPLES));
        self.tx
            .send((self.batch_rate_hz, batch))
            .map_err(|_| AudioError::Internal {
                reason: "the resampling thread stopped".to_owned(),
            })
    }
}

impl Downstream for ToHelper {
    fn push(&mut self, rate_hz: u32, mono: &[f32]) -> Result<(), AudioError> {
        if rate_hz != self.batch_rate_hz {
            self.flush()?;
            self.batch_rate_hz = rate_hz;
        }
        self.batch.extend_from_slice(mono);
        if self.batch.len() >= HELPER_BATCH_SAMPLES {
            self.flush()?;
        }
        Ok(())
    }
}

/// What the decode loop learnt besides the samples.
struct Summary {
    source_rate_hz: Option<u32>,
    channels: Option<u16>,
    codec: String,
    failed_packets: u64,
    last_decode_error: Option<String>,
}

/// Decodes everything `mss` holds on this thread, resampling here.
fn decode_inline(
    mss: MediaSourceStream<'_>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
) -> Result<(Decoded, Tags), AudioError> {
    let mut resampling = Resampling::new(opts.target_rate_hz, None);
    let (summary, tags) = decode_loop(mss, ext_hint, opts, &mut resampling)?;
    let samples = resampling.finish()?;
    Ok((assemble(summary, samples, opts)?, tags))
}

/// Decodes everything `mss` holds, resampling on a helper thread while this one decodes,
/// and shows `sink` the output there as it is made.
fn decode_with_helper(
    mss: MediaSourceStream<'_>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
    sink: &mut SampleSink<'_>,
) -> Result<(Decoded, Tags), AudioError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, Vec<f32>)>(HELPER_QUEUE);
    let target_rate_hz = opts.target_rate_hz;
    std::thread::scope(|scope| {
        let helper = scope.spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut resampling = Resampling::new(target_rate_hz, Some(sink));
                for (rate_hz, mono) in rx {
                    resampling.push(rate_hz, &mono)?;
                }
                resampling.finish()
            }))
            .unwrap_or_else(|panic| Err(panic_error(&panic)))
        });
        let mut to_helper = ToHelper {
            tx,
            batch: Vec::with_capacity(HELPER_BATCH_SAMPLES),
            batch_rate_hz: 0,
        };
        let decoded = decode_loop(mss, ext_hint, opts, &mut to_helper)
            .and_then(|found| to_helper.flush().map(|()| found));
        // Closing the channel ends the helper's loop.
        drop(to_helper);
        let resampled = helper
            .join()
            .unwrap_or_else(|panic| Err(panic_error(&panic)));
        match (decoded, resampled) {
            (Ok((summary, tags)), Ok(samples)) => Ok((assemble(summary, samples, opts)?, tags)),
            // A failed send only says that the helper stopped; the helper says why.
            (Err(AudioError::Internal { .. }), Err(e)) => Err(e),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    })
}

/// The user-facing error for a panic caught in the decoder or the resampler.
fn panic_error(panic: &Box<dyn std::any::Any + Send>) -> AudioError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    AudioError::Malformed {
        reason: format!("the decoder crashed on this data ({what})"),
    }
}

/// The decoded audio, or the error that no audio came out.
fn assemble(
    summary: Summary,
    mut samples: Vec<f32>,
    opts: &DecodeOptions,
) -> Result<Decoded, AudioError> {
    if samples.is_empty() {
        if summary.failed_packets > 0 {
            return Err(AudioError::Malformed {
                reason: format!(
                    "all {} audio packets failed to decode (last error: {})",
                    summary.failed_packets,
                    summary.last_decode_error.as_deref().unwrap_or("unknown")
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
    Ok(Decoded {
        duration_s: samples.len() as f64 / f64::from(rate_hz),
        samples,
        rate_hz,
        source_rate_hz: summary.source_rate_hz.unwrap_or(rate_hz),
        channels: summary.channels.unwrap_or(1),
        codec: summary.codec,
    })
}

/// Demuxes and decodes everything `mss` holds, passing the downmixed audio downstream.
fn decode_loop(
    mss: MediaSourceStream<'_>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
    downstream: &mut dyn Downstream,
) -> Result<(Summary, Tags), AudioError> {
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

    let mut front = Front::new(opts);
    if let Some((frames, rate_hz)) = declared.filter(|&(_, r)| r > 0) {
        let at_target = frames.saturating_mul(u64::from(opts.target_rate_hz)) / u64::from(rate_hz);
        downstream.reserve(usize::try_from(at_target.min(MAX_RESERVE_SAMPLES)).unwrap_or(0));
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
                front.push(&buf, downstream)?;
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

    Ok((
        Summary {
            source_rate_hz: front.first_rate_hz,
            channels: front.channels,
            codec,
            failed_packets,
            last_decode_error,
        },
        tags.finish(),
    ))
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

/// Decodes a file from disk; see [`crate::decode_file`] and [`crate::decode_file_streaming`].
pub(crate) fn decode_path(
    path: &Path,
    opts: &DecodeOptions,
    sink: Option<&mut SampleSink<'_>>,
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
    decode_stream(mss, ext, opts, sink).map_err(|e| match e {
        // Name the actual file rather than the placeholder used inside the pipeline.
        AudioError::Io { source, .. } => io_err(source),
        other => other,
    })
}
