//! Audio decoding for cratedigger: any common file in, mono f32 at a fixed rate out, plus tags.
//!
//! Decoding uses symphonia (with libopus for Opus), downmixes to mono by averaging channels,
//! then resamples with rubato's FFT resampler in streaming chunks. Untrusted input never panics
//! the caller and never makes us allocate more than the decoded audio itself.

mod decode;
mod error;
mod resample;
mod tags;

use std::io::Cursor;
use std::path::Path;

use symphonia::core::io::MediaSourceStream;

pub use error::AudioError;
pub use tags::Tags;

/// How to decode.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOptions {
    /// Rate of the returned samples, in hertz (1 kHz to 768 kHz).
    pub target_rate_hz: u32,
    /// Decoding stops with [`AudioError::TooLong`] once the audio exceeds this many seconds.
    pub max_duration_s: f64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            target_rate_hz: 16_000,
            max_duration_s: 4.0 * 3600.0,
        }
    }
}

/// What a streaming decode ([`decode_file_streaming`]) shows the samples to, on its
/// helper thread, as they are made.
pub type SampleSink<'a> = dyn FnMut(&[f32]) + Send + 'a;

/// Decoded mono audio.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Mono samples at `rate_hz`, nominally in [-1, 1], always finite.
    pub samples: Vec<f32>,
    /// Rate of `samples`, in hertz (the requested `target_rate_hz`).
    pub rate_hz: u32,
    /// Sample rate of the source audio, in hertz.
    pub source_rate_hz: u32,
    /// Number of channels in the source audio (before downmixing).
    pub channels: u16,
    /// Short codec name as symphonia reports it, e.g. "mp3", "flac", "vorbis", "opus", "aac".
    pub codec: String,
    /// Length of `samples`, in seconds.
    pub duration_s: f64,
}

/// Resamples mono `samples` from `in_rate_hz` to `out_rate_hz` (both 1 Hz or more) with the
/// decoder's resampler; the output has `round(len * out / in)` samples. Reinterpreting the
/// output at the input rate plays the audio `in / out` times as fast, as a turntable would:
/// the query side uses this to undo a sample's speed change.
pub fn resample_mono(
    samples: &[f32],
    in_rate_hz: u32,
    out_rate_hz: u32,
) -> Result<Vec<f32>, AudioError> {
    if in_rate_hz == 0 || out_rate_hz == 0 {
        return Err(AudioError::InvalidOptions {
            reason: format!("cannot resample {in_rate_hz} Hz -> {out_rate_hz} Hz"),
        });
    }
    let mut r = resample::MonoResampler::new(in_rate_hz, out_rate_hz)?;
    if r.is_passthrough() {
        return Ok(samples.to_vec());
    }
    let mut out = Vec::with_capacity(
        (samples.len() as f64 * f64::from(out_rate_hz) / f64::from(in_rate_hz)) as usize + 16,
    );
    for part in samples.chunks(1 << 16) {
        r.input().extend_from_slice(part);
        r.process_ready(&mut out)?;
    }
    r.finish(&mut out)?;
    Ok(out)
}

/// Decodes an audio file to mono at `opts.target_rate_hz` and reads its tags.
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<(Decoded, Tags), AudioError> {
    decode::decode_path(path, opts, None)
}

/// Decodes like [`decode_file`], but resamples on a second thread while this one decodes,
/// and hands `sink` the mono samples there, in order, as they are made: whatever the sink
/// does with them (a spectrogram, say) overlaps the decoding. The samples are the same as
/// [`decode_file`]'s, and are also returned.
pub fn decode_file_streaming(
    path: &Path,
    opts: &DecodeOptions,
    sink: &mut SampleSink<'_>,
) -> Result<(Decoded, Tags), AudioError> {
    decode::decode_path(path, opts, Some(sink))
}

/// Decodes audio held in memory (e.g. an HTTP upload); `ext_hint` is the file extension if known.
pub fn decode_bytes(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
) -> Result<(Decoded, Tags), AudioError> {
    decode_memory(bytes, ext_hint, opts, None)
}

/// [`decode_bytes`] with a sink, as [`decode_file_streaming`] takes one.
pub fn decode_bytes_streaming(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
    sink: &mut SampleSink<'_>,
) -> Result<(Decoded, Tags), AudioError> {
    decode_memory(bytes, ext_hint, opts, Some(sink))
}

fn decode_memory(
    bytes: Vec<u8>,
    ext_hint: Option<&str>,
    opts: &DecodeOptions,
    sink: Option<&mut SampleSink<'_>>,
) -> Result<(Decoded, Tags), AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    decode::decode_stream(mss, ext_hint, opts, sink).map_err(|e| match e {
        AudioError::Io { source, .. } => AudioError::Io {
            path: "<memory>".into(),
            source,
        },
        other => other,
    })
}

/// BLAKE3 hash of the file's bytes, read in a streaming fashion.
pub fn content_hash(path: &Path) -> Result<[u8; 32], AudioError> {
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut file).map_err(io_err)?;
    Ok(*hasher.finalize().as_bytes())
}

/// File extensions we try to decode, lower-case and without the dot.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    "mp3", "flac", "ogg", "oga", "opus", "wav", "wave", "aif", "aiff", "aifc", "m4a", "mp4", "aac",
    "alac", "caf", "mka", "webm",
];

/// True if the path's extension (case-insensitive) is one we try to decode.
pub fn is_supported_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| {
            SUPPORTED_EXTENSIONS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(ext))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(is_supported_extension(Path::new("/a/b.MP3")));
        assert!(is_supported_extension(Path::new("x.Opus")));
        assert!(is_supported_extension(Path::new("x.webm")));
        assert!(!is_supported_extension(Path::new("x.txt")));
        assert!(!is_supported_extension(Path::new("mp3")));
        assert!(!is_supported_extension(Path::new("x.")));
    }

    #[test]
    fn content_hash_is_blake3_of_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob.bin");
        // Larger than any internal read buffer, so the streaming path is exercised.
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let hash = content_hash(&path).expect("hash");
        assert_eq!(hash, *blake3::hash(&bytes).as_bytes());
        assert!(matches!(
            content_hash(&dir.path().join("missing")),
            Err(AudioError::Io { .. })
        ));
    }

    /// The frequency of the strongest of `probes` in `x` at `rate`, by correlation.
    fn strongest(x: &[f32], rate: f32, probes: &[f32]) -> f32 {
        let power = |f: f32| {
            let (mut c, mut s) = (0.0f64, 0.0f64);
            for (n, &v) in x.iter().enumerate() {
                let phase = 2.0 * std::f64::consts::PI * f64::from(f) * n as f64 / f64::from(rate);
                c += f64::from(v) * phase.cos();
                s += f64::from(v) * phase.sin();
            }
            c * c + s * s
        };
        probes
            .iter()
            .copied()
            .max_by(|a, b| power(*a).total_cmp(&power(*b)))
            .unwrap_or(0.0)
    }

    #[test]
    fn resampling_plays_audio_at_another_speed() {
        let rate = 16_000u32;
        let sine: Vec<f32> = (0..rate)
            .map(|n| (2.0 * std::f32::consts::PI * 1_000.0 * n as f32 / rate as f32).sin())
            .collect();
        // 16 kHz -> 20 kHz read back at 16 kHz: 1.25 times as long, a 1 kHz tone at 800 Hz.
        let slowed = resample_mono(&sine, rate, 20_000).expect("resamples");
        assert_eq!(slowed.len(), 20_000);
        let probes = [640.0, 800.0, 1_000.0, 1_250.0];
        assert_eq!(strongest(&slowed, rate as f32, &probes), 800.0);
        let sped = resample_mono(&sine, rate, 12_800).expect("resamples");
        assert_eq!(sped.len(), 12_800);
        assert_eq!(strongest(&sped, rate as f32, &probes), 1_250.0);
        assert_eq!(resample_mono(&sine, rate, rate).expect("copies"), sine);
        assert!(resample_mono(&[], rate, 20_000).expect("empty").is_empty());
        assert!(matches!(
            resample_mono(&sine, 0, rate),
            Err(AudioError::InvalidOptions { .. })
        ));
    }

    #[test]
    fn default_options_match_the_spec() {
        let o = DecodeOptions::default();
        assert_eq!(o.target_rate_hz, 16_000);
        assert_eq!(o.max_duration_s, 14_400.0);
    }

    #[test]
    fn bad_options_are_rejected() {
        let bytes = vec![0u8; 100];
        for opts in [
            DecodeOptions {
                target_rate_hz: 0,
                ..Default::default()
            },
            DecodeOptions {
                max_duration_s: f64::NAN,
                ..Default::default()
            },
            DecodeOptions {
                max_duration_s: -1.0,
                ..Default::default()
            },
        ] {
            let r = decode_bytes(bytes.clone(), None, &opts);
            assert!(matches!(r, Err(AudioError::InvalidOptions { .. })), "{r:?}");
        }
    }
}
