//! Hostile and broken input: every case must return promptly with Ok or Err, never panic,
//! and never allocate in proportion to what a header claims.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use audio::{AudioError, DecodeOptions, decode_bytes, decode_file};
use common::*;
use proptest::prelude::*;

fn opts() -> DecodeOptions {
    DecodeOptions::default()
}

/// Pseudo-random bytes from a fixed seed (xorshift), so failures are reproducible.
fn noise_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[test]
fn zero_byte_file_is_empty_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.mp3");
    std::fs::write(&path, b"").expect("write");
    let r = decode_file(&path, &opts());
    assert!(matches!(r, Err(AudioError::Empty)), "{r:?}");
    assert!(matches!(
        decode_bytes(Vec::new(), Some("mp3"), &opts()),
        Err(AudioError::Empty)
    ));
}

#[test]
fn missing_file_is_io_error_naming_the_path() {
    let r = decode_file(Path::new("/nonexistent/dir/song.flac"), &opts());
    match r {
        Err(e @ AudioError::Io { .. }) => assert!(e.to_string().contains("song.flac"), "{e}"),
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[test]
fn random_bytes_and_text_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = b"This is not audio.\nJust a text file with some words in it.\n".repeat(50);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random.mp3", noise_bytes(200_000, 1)),
        ("random.flac", noise_bytes(50_000, 2)),
        ("random.ogg", noise_bytes(50_000, 3)),
        ("random.wav", noise_bytes(50_000, 4)),
        ("random.m4a", noise_bytes(50_000, 5)),
        ("notes.mp3", text.clone()),
        ("notes.txt", text),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).expect("write");
        let start = Instant::now();
        let r = decode_file(&path, &opts());
        eprintln!(
            "{name}: {:?} in {:?}",
            r.as_ref().map(|(d, _)| d.duration_s),
            start.elapsed()
        );
        if let Ok((d, _)) = &r {
            // Noise that happens to sync as MP3 frames may decode; it must still be sane.
            assert!(d.samples.iter().all(|s| s.is_finite()));
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{name} too slow");
    }
}

#[test]
fn truncated_mp3_and_flac_decode_partially_or_fail_cleanly() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (ext, codec) in [
        ("mp3", "libmp3lame"),
        ("flac", "flac"),
        ("ogg", "libvorbis"),
        ("opus", "libopus"),
        ("m4a", "aac"),
    ] {
        let path = dir.path().join(format!("full.{ext}"));
        run(
            ffmpeg_lavfi("sine=frequency=1000:sample_rate=44100:duration=10")
                .args(["-c:a", codec])
                .arg(&path),
        );
        let bytes = std::fs::read(&path).expect("read");
        for fraction in [0.3, 0.7, 0.999] {
            let cut = (bytes.len() as f64 * fraction) as usize;
            let cut_path = dir.path().join(format!("cut.{ext}"));
            std::fs::write(&cut_path, &bytes[..cut]).expect("write");
            let r = decode_file(&cut_path, &opts());
            eprintln!(
                "{ext} cut to {fraction}: {:?}",
                r.as_ref().map(|(d, _)| d.duration_s)
            );
            if let Ok((d, _)) = r {
                assert!(d.duration_s <= 10.1, "{ext}: {}", d.duration_s);
                assert!(d.samples.iter().all(|s| s.is_finite()));
            }
        }
        // The head of a file (first 30%) is the interesting truncation case for the brief.
        let cut = bytes.len() * 3 / 10;
        let r = decode_bytes(bytes[..cut].to_vec(), Some(ext), &opts());
        if let Ok((d, _)) = r {
            assert!(d.duration_s < 9.0, "{ext}: {}", d.duration_s);
        }
    }
}

#[test]
fn corrupted_middle_of_mp3_skips_bad_packets() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("full.mp3");
    run(
        ffmpeg_lavfi("sine=frequency=1000:sample_rate=44100:duration=10")
            .args(["-c:a", "libmp3lame"])
            .arg(&path),
    );
    let mut bytes = std::fs::read(&path).expect("read");
    let len = bytes.len();
    let garbage = noise_bytes(len / 10, 9);
    bytes[len / 2..len / 2 + garbage.len()].copy_from_slice(&garbage);
    let (d, _) = decode_bytes(bytes, Some("mp3"), &opts()).expect("corrupt middle still decodes");
    assert!(d.duration_s > 5.0, "{}", d.duration_s);
}

#[test]
fn wav_header_claiming_4gb_returns_quickly_without_huge_allocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("liar.wav");
    let pcm: Vec<u8> = sine(440.0, 44_100, 2, 1.0, 0.5)
        .iter()
        .flat_map(|&s| ((s * 32767.0) as i16).to_le_bytes())
        .collect();
    std::fs::write(&path, wav_bytes(44_100, 2, 0xFFFF_FFF0, &pcm)).expect("write");
    let start = Instant::now();
    let r = decode_file(&path, &opts());
    let elapsed = start.elapsed();
    eprintln!(
        "liar.wav: {:?} in {elapsed:?}",
        r.as_ref().map(|(d, _)| d.duration_s)
    );
    assert!(elapsed < Duration::from_secs(5));
    if let Ok((d, _)) = r {
        assert!((d.duration_s - 1.0).abs() < 0.05, "{}", d.duration_s);
        // The over-declared length must not leave a gigantic buffer behind.
        assert!(
            d.samples.capacity() < 2 * 16_000 + 1024,
            "capacity {}",
            d.samples.capacity()
        );
    }
}

#[test]
fn wav_claiming_absurd_rate_or_channels_is_rejected() {
    let pcm = vec![0u8; 4000];
    for (rate, ch) in [(0u32, 2u16), (4_000_000_000, 2), (44_100, 0), (44_100, 300)] {
        let r = decode_bytes(
            wav_bytes(rate, ch, pcm.len() as u32, &pcm),
            Some("wav"),
            &opts(),
        );
        eprintln!("rate {rate} ch {ch}: {r:?}");
        if let Ok((d, _)) = r {
            assert!(d.samples.iter().all(|s| s.is_finite()));
        }
    }
}

/// Float WAVs hold whatever a writer put there. Regression: the fuzz target found a float
/// WAV whose samples near f32::MAX went through the resampler's sums to infinity and NaN,
/// breaking the "always finite" contract of `Decoded::samples`.
#[test]
fn float_wav_of_nan_infinity_and_huge_values_decodes_to_finite_samples() {
    let tone = sine(440.0, 8_000, 1, 2.0, 0.5);
    let hostile = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        1e30,
    ];
    for rate_hz in [8_000, 16_000, 44_100] {
        // Every other sample hostile, then a second of nothing but NaN and infinities.
        let mut samples: Vec<f32> = tone
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                if i % 2 == 0 {
                    s
                } else {
                    hostile[i / 2 % hostile.len()]
                }
            })
            .collect();
        samples.extend((0..rate_hz).map(|i| hostile[i as usize % 3]));
        let bytes = wav_f32_bytes(rate_hz, 1, &samples);
        let (d, _) = decode_bytes(bytes, Some("wav"), &opts()).expect("a float WAV decodes");
        let worst = d.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(
            d.samples.iter().all(|s| s.is_finite()),
            "{rate_hz} Hz: non-finite samples in the output"
        );
        // Inputs are clipped to 64x full scale; the resampler's ripple adds a little.
        assert!(worst < 256.0, "{rate_hz} Hz: a sample of {worst}");
    }
}

/// A file of 1 ms (16 samples at the engine rate) is audio, just too little of it.
#[test]
fn one_millisecond_file_decodes_to_a_few_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blip.wav");
    write_wav_i16(&path, 44_100, 2, &sine(1000.0, 44_100, 2, 0.001, 0.5));
    match decode_file(&path, &opts()) {
        Ok((d, _)) => assert!(d.samples.len() <= 32, "{} samples", d.samples.len()),
        Err(e) => assert!(matches!(e, AudioError::Empty), "{e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        hint in prop_oneof![
            Just(None),
            Just(Some("mp3")),
            Just(Some("wav")),
            Just(Some("ogg")),
            Just(Some("flac")),
        ],
    ) {
        let _ = decode_bytes(bytes, hint, &opts());
    }

    #[test]
    fn mutated_wav_never_panics(
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..16),
    ) {
        let pcm: Vec<u8> = sine(440.0, 8_000, 1, 0.2, 0.5)
            .iter()
            .flat_map(|&s| ((s * 32767.0) as i16).to_le_bytes())
            .collect();
        let mut bytes = wav_bytes(8_000, 1, pcm.len() as u32, &pcm);
        for (pos, val) in flips {
            let i = pos % bytes.len();
            bytes[i] = val;
        }
        if let Ok((d, _)) = decode_bytes(bytes, Some("wav"), &opts()) {
            prop_assert!(d.samples.iter().all(|s| s.is_finite()));
        }
    }
}
