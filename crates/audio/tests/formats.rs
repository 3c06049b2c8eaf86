//! Decoding of synthetic files in every supported container/codec, checking rate, duration,
//! pitch and tags.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use audio::{
    AudioError, DecodeOptions, Decoded, Tags, decode_bytes, decode_file, decode_file_streaming,
};
use common::*;

fn opts() -> DecodeOptions {
    DecodeOptions::default()
}

fn decode_ok(path: &Path) -> (Decoded, Tags) {
    match decode_file(path, &opts()) {
        Ok(r) => r,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Checks the invariants every decode result must satisfy.
fn check_basic(d: &Decoded) {
    assert_eq!(d.rate_hz, 16_000);
    assert!(d.samples.iter().all(|s| s.is_finite()));
    let expect_s = d.samples.len() as f64 / 16_000.0;
    assert!((d.duration_s - expect_s).abs() < 1e-9);
}

#[test]
fn sine_44k1_stereo_wav_becomes_16k_mono_at_1khz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sine.wav");
    write_wav_i16(&path, 44_100, 2, &sine(1000.0, 44_100, 2, 3.0, 0.5));

    let (d, tags) = decode_ok(&path);
    check_basic(&d);
    assert_eq!(d.source_rate_hz, 44_100);
    assert_eq!(d.channels, 2);
    assert!(
        (d.duration_s - 3.0).abs() < 0.03,
        "duration {}",
        d.duration_s
    );
    assert_eq!(
        dominant_frequency_hz(middle(&d.samples, 4000), 16_000, 10.0),
        1000.0
    );
    // A 0.5-amplitude sine has an RMS of 0.5/sqrt(2); the resampler must keep the level.
    let level = rms(middle(&d.samples, 16_000));
    assert!((level - 0.3536).abs() < 0.01, "rms {level}");
    assert_eq!(tags, Tags::default());
}

#[test]
fn stereo_is_averaged_not_summed_or_dropped() {
    // Left carries the tone, right its inverse: the average must be silence.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anti.wav");
    let mono = sine(440.0, 48_000, 1, 1.0, 0.5);
    let stereo: Vec<f32> = mono.iter().flat_map(|&s| [s, -s]).collect();
    write_wav_i16(&path, 48_000, 2, &stereo);
    let (d, _) = decode_ok(&path);
    assert!(rms(&d.samples) < 1e-3, "rms {}", rms(&d.samples));

    // Left only: the average is half the amplitude.
    let left_only: Vec<f32> = mono.iter().flat_map(|&s| [s, 0.0]).collect();
    write_wav_i16(&path, 48_000, 2, &left_only);
    let (d, _) = decode_ok(&path);
    let level = rms(middle(&d.samples, 8000));
    assert!((level - 0.1768).abs() < 0.01, "rms {level}");
}

#[test]
fn source_at_target_rate_is_passed_through_sample_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("16k.wav");
    let input = sine(300.0, 16_000, 1, 1.5, 0.25);
    write_wav_i16(&path, 16_000, 1, &input);
    let (d, _) = decode_ok(&path);
    assert_eq!(d.samples.len(), input.len());
    for (a, b) in d.samples.iter().zip(&input) {
        assert!((a - b).abs() < 1e-4);
    }
}

#[test]
fn decode_bytes_matches_decode_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.wav");
    write_wav_i16(&path, 22_050, 1, &sine(500.0, 22_050, 1, 1.0, 0.3));
    let (a, ta) = decode_ok(&path);
    let bytes = std::fs::read(&path).expect("read");
    let (b, tb) = decode_bytes(bytes.clone(), Some("wav"), &opts()).expect("decode bytes");
    assert_eq!(a, b);
    assert_eq!(ta, tb);
    // The hint is only a hint: the content decides.
    let (c, _) = decode_bytes(bytes, None, &opts()).expect("decode bytes without hint");
    assert_eq!(a, c);
}

#[test]
fn too_long_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("long.wav");
    write_wav_i16(&path, 8_000, 1, &sine(200.0, 8_000, 1, 3.0, 0.3));
    let short = DecodeOptions {
        max_duration_s: 1.0,
        ..opts()
    };
    let r = decode_file(&path, &short);
    assert!(matches!(r, Err(AudioError::TooLong { .. })), "{r:?}");
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("max_duration_s"), "{msg}");
}

#[test]
fn other_target_rates_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.wav");
    write_wav_i16(&path, 44_100, 1, &sine(1000.0, 44_100, 1, 1.0, 0.3));
    for rate in [8_000u32, 11_025, 22_050, 48_000] {
        let o = DecodeOptions {
            target_rate_hz: rate,
            ..opts()
        };
        let (d, _) = decode_file(&path, &o).expect("decode");
        assert_eq!(d.rate_hz, rate);
        assert_eq!(d.samples.len(), rate as usize, "rate {rate}");
        assert_eq!(
            dominant_frequency_hz(middle(&d.samples, 2000), rate, 10.0),
            1000.0
        );
    }
}

#[test]
fn sox_8k_mono_and_192k_8ch() {
    if !have_sox() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (rate, ch, bits) in [
        (8_000u32, 1u16, "16"),
        (192_000, 8, "24"),
        (96_000, 6, "32"),
    ] {
        let path = dir.path().join(format!("{rate}_{ch}.wav"));
        run(Command::new("sox")
            .args(["-n", "-r", &rate.to_string(), "-c", &ch.to_string()])
            .args(["-b", bits])
            .arg(&path)
            .args(["synth", "2", "sine", "440", "vol", "0.5"]));
        let (d, _) = decode_ok(&path);
        check_basic(&d);
        assert_eq!(d.source_rate_hz, rate);
        assert_eq!(d.channels, ch);
        assert!(
            (d.duration_s - 2.0).abs() < 0.02,
            "{rate}/{ch}: {}",
            d.duration_s
        );
        assert_eq!(
            dominant_frequency_hz(middle(&d.samples, 4000), 16_000, 10.0),
            440.0
        );
    }
}

struct Case {
    ext: &'static str,
    args: &'static [&'static str],
    codec: &'static str,
    /// Allowed duration error in seconds (50 ms plus the codec's padding).
    tolerance_s: f64,
    check_tags: bool,
}

const CASES: &[Case] = &[
    Case {
        ext: "mp3",
        args: &["-c:a", "libmp3lame", "-b:a", "192k"],
        codec: "mp3",
        tolerance_s: 0.08,
        check_tags: true,
    },
    Case {
        ext: "flac",
        args: &["-c:a", "flac"],
        codec: "flac",
        tolerance_s: 0.05,
        check_tags: true,
    },
    Case {
        ext: "ogg",
        args: &["-c:a", "libvorbis", "-q:a", "4"],
        codec: "vorbis",
        tolerance_s: 0.05,
        check_tags: true,
    },
    Case {
        ext: "opus",
        args: &["-c:a", "libopus", "-b:a", "96k"],
        codec: "opus",
        tolerance_s: 0.05,
        check_tags: true,
    },
    Case {
        ext: "m4a",
        args: &["-c:a", "aac", "-b:a", "128k"],
        codec: "aac",
        tolerance_s: 0.08,
        check_tags: true,
    },
    Case {
        ext: "aiff",
        args: &["-c:a", "pcm_s16be"],
        codec: "",
        tolerance_s: 0.05,
        check_tags: false,
    },
    Case {
        ext: "wav",
        args: &["-c:a", "pcm_f32le"],
        codec: "",
        tolerance_s: 0.05,
        check_tags: false,
    },
    Case {
        ext: "mka",
        args: &["-c:a", "flac"],
        codec: "flac",
        tolerance_s: 0.05,
        check_tags: false,
    },
    Case {
        ext: "webm",
        args: &["-c:a", "libopus"],
        codec: "opus",
        tolerance_s: 0.05,
        check_tags: false,
    },
    Case {
        ext: "caf",
        args: &["-c:a", "alac"],
        codec: "alac",
        tolerance_s: 0.05,
        check_tags: false,
    },
];

fn encode(dir: &Path, case: &Case, rate_hz: u32, duration_s: f64) -> PathBuf {
    let path = dir.join(format!("test_{}.{}", rate_hz, case.ext));
    run(ffmpeg_lavfi(&format!(
        "sine=frequency=1000:sample_rate={rate_hz}:duration={duration_s}"
    ))
    .args(["-ac", "2"])
    .args([
        "-metadata",
        "title=Test Title",
        "-metadata",
        "artist=Test Artist",
    ])
    .args(["-metadata", "album=Test Album", "-metadata", "date=1973"])
    .args(case.args)
    .arg(&path));
    path
}

#[test]
fn ffmpeg_encoded_formats_decode_with_right_duration_pitch_and_tags() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for case in CASES {
        let path = encode(dir.path(), case, 44_100, 5.0);
        let (d, tags) = match decode_file(&path, &opts()) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", case.ext));
                continue;
            }
        };
        check_basic(&d);
        eprintln!(
            "{:>5}: codec={} src={} Hz ch={} duration={:.4} s tags={:?}",
            case.ext, d.codec, d.source_rate_hz, d.channels, d.duration_s, tags
        );
        if !case.codec.is_empty() && d.codec != case.codec {
            failures.push(format!("{}: codec {} != {}", case.ext, d.codec, case.codec));
        }
        if (d.duration_s - 5.0).abs() > case.tolerance_s {
            failures.push(format!("{}: duration {}", case.ext, d.duration_s));
        }
        let f = dominant_frequency_hz(middle(&d.samples, 4000), 16_000, 10.0);
        if f != 1000.0 {
            failures.push(format!("{}: dominant {f} Hz", case.ext));
        }
        if case.check_tags {
            let want = Tags {
                title: Some("Test Title".into()),
                artist: Some("Test Artist".into()),
                album: Some("Test Album".into()),
                year: Some(1973),
                ..Tags::default()
            };
            if tags != want {
                failures.push(format!("{}: tags {tags:?}", case.ext));
            }
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn odd_source_rates_decode() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let flac = &CASES[1];
    for rate in [11_025u32, 22_050, 32_000, 88_200, 44_056] {
        let path = encode(dir.path(), flac, rate, 2.0);
        let (d, _) = decode_ok(&path);
        assert_eq!(d.source_rate_hz, rate);
        assert!(
            (d.duration_s - 2.0).abs() < 0.02,
            "{rate}: {}",
            d.duration_s
        );
        assert_eq!(
            dominant_frequency_hz(middle(&d.samples, 4000), 16_000, 10.0),
            1000.0
        );
    }
}

#[test]
fn musicbrainz_ids_are_read_from_vorbis_comments_and_id3() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = "8f3471b5-7e6a-48da-86a9-c1c07a0f47ae";
    let rel = "1d2c3b4a-0000-4000-8000-123456789abc";
    for (ext, codec, keys) in [
        (
            "flac",
            "flac",
            ["MUSICBRAINZ_TRACKID", "MUSICBRAINZ_ALBUMID"],
        ),
        (
            "ogg",
            "libvorbis",
            ["MUSICBRAINZ_TRACKID", "MUSICBRAINZ_ALBUMID"],
        ),
        (
            "mp3",
            "libmp3lame",
            ["MusicBrainz Track Id", "MusicBrainz Album Id"],
        ),
    ] {
        let path = dir.path().join(format!("mb.{ext}"));
        run(
            ffmpeg_lavfi("sine=frequency=440:sample_rate=44100:duration=1")
                .arg("-metadata")
                .arg(format!("{}={rec}", keys[0]))
                .arg("-metadata")
                .arg(format!("{}={rel}", keys[1]))
                .args(["-metadata", "date=2001-09-11", "-c:a", codec])
                .arg(&path),
        );
        let (_, tags) = decode_ok(&path);
        eprintln!("{ext}: {tags:?}");
        assert_eq!(tags.musicbrainz_release_id.as_deref(), Some(rel), "{ext}");
        assert_eq!(tags.year, Some(2001), "{ext}");
        // ffmpeg writes "MusicBrainz Track Id" as an ID3 TXXX frame, which Picard does not
        // use for the recording id (it uses UFID), so only Vorbis comments are required here.
        if ext != "mp3" {
            assert_eq!(tags.musicbrainz_recording_id.as_deref(), Some(rec), "{ext}");
        }
    }
}

#[test]
fn lossy_codecs_keep_time_alignment() {
    // Encoder delay (MP3/AAC priming, Opus pre-skip) must be trimmed, not left as a shift:
    // a tone starting at exactly 1 s must start at 1 s in the decoded audio.
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = Vec::new();
    for case in CASES.iter().filter(|c| c.ext != "caf") {
        let path = dir.path().join(format!("onset.{}", case.ext));
        run(
            ffmpeg_lavfi("aevalsrc=if(gte(t\\,1)\\,0.5*sin(2*PI*1000*t)\\,0):s=44100:d=3")
                .args(case.args)
                .arg(&path),
        );
        let (d, _) = decode_ok(&path);
        let onset = d
            .samples
            .iter()
            .position(|s| s.abs() > 0.2)
            .unwrap_or(usize::MAX);
        let error_ms = (onset as f64 / 16.0) - 1000.0;
        report.push(format!("{}: onset error {error_ms:+.2} ms", case.ext));
        // Symphonia 0.6 ignores MP4 edit lists, so AAC-in-MP4 keeps its ~23 ms priming delay.
        let tolerance_ms = if case.ext == "m4a" { 50.0 } else { 5.0 };
        assert!(
            error_ms.abs() < tolerance_ms,
            "{}: onset error {error_ms} ms",
            case.ext
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn surround_lossy_files() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (ext, args) in [
        ("ogg", &["-c:a", "libvorbis"][..]),
        ("m4a", &["-c:a", "aac"][..]),
        ("flac", &["-c:a", "flac"][..]),
        ("opus", &["-c:a", "libopus", "-mapping_family", "1"][..]),
    ] {
        let path = dir.path().join(format!("six.{ext}"));
        run(
            ffmpeg_lavfi("sine=frequency=440:sample_rate=48000:duration=2")
                .args(["-ac", "6"])
                .args(args)
                .arg(&path),
        );
        let r = decode_file(&path, &opts());
        eprintln!(
            "6ch {ext}: {:?}",
            r.as_ref().map(|(d, _)| (d.channels, d.duration_s))
        );
        match r {
            Ok((d, _)) => {
                assert_eq!(d.channels, 6);
                assert!((d.duration_s - 2.0).abs() < 0.08, "{ext}: {}", d.duration_s);
            }
            // Known gaps, reported cleanly: the libopus adapter only handles mono/stereo (no
            // multistream decoder), and symphonia's AAC decoder only mono/stereo too.
            Err(AudioError::Unsupported { reason }) if ext == "opus" || ext == "m4a" => {
                eprintln!("6ch {ext} unsupported: {reason}");
            }
            Err(e) => panic!("{ext}: {e}"),
        }
    }
}

/// Decodes `path` both ways: plainly, and resampling on the helper thread with a sink
/// that collects what it is shown.
fn decode_both(
    path: &Path,
    o: &DecodeOptions,
) -> (Result<Decoded, String>, Result<Decoded, String>, Vec<f32>) {
    let plain = decode_file(path, o)
        .map(|(d, _)| d)
        .map_err(|e| e.to_string());
    let mut shown = Vec::new();
    let streamed =
        decode_file_streaming(path, o, &mut |chunk: &[f32]| shown.extend_from_slice(chunk))
            .map(|(d, _)| d)
            .map_err(|e| e.to_string());
    (plain, streamed, shown)
}

#[test]
fn streaming_decode_gives_the_same_samples_and_errors() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Every codec, at a rate that is resampled; and a passthrough WAV.
    let mut paths: Vec<PathBuf> = CASES
        .iter()
        .map(|case| encode(dir.path(), case, 44_100, 3.0))
        .collect();
    let wav = dir.path().join("at_target.wav");
    write_wav_i16(&wav, 16_000, 1, &sine(440.0, 16_000, 1, 2.0, 0.3));
    paths.push(wav);
    // A chained Ogg whose second link changes the rate: the resampler is flushed and
    // rebuilt in the middle of the stream.
    let vorbis = CASES.iter().find(|c| c.ext == "ogg").expect("an ogg case");
    let a = encode(dir.path(), vorbis, 44_100, 1.5);
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).expect("mkdir");
    let b = encode(&b_dir, vorbis, 22_050, 1.5);
    let chained = dir.path().join("chained.ogg");
    let mut bytes = std::fs::read(&a).expect("read a");
    bytes.extend(std::fs::read(&b).expect("read b"));
    std::fs::write(&chained, bytes).expect("write chained");
    paths.push(chained.clone());
    for path in &paths {
        let (plain, streamed, shown) = decode_both(path, &opts());
        let plain = plain.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let streamed = streamed.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(plain, streamed, "{}", path.display());
        assert_eq!(shown, plain.samples, "{}", path.display());
    }
    let (plain, _, _) = decode_both(&chained, &opts());
    assert!(
        plain.expect("chained").duration_s > 2.9,
        "both links decode"
    );
    // The duration limit is an error either way, and the same one.
    let short = DecodeOptions {
        max_duration_s: 1.0,
        ..opts()
    };
    let (plain, streamed, _) = decode_both(&paths[0], &short);
    assert!(
        plain.as_ref().is_err_and(|e| e.contains("max_duration_s")),
        "{plain:?}"
    );
    assert_eq!(plain, streamed);
}
