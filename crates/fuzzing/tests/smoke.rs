//! The fuzz targets on stable, in the normal test run: seed inputs plus a few thousand
//! inputs mutated from them with a fixed seed, through the same functions cargo-fuzz
//! runs. A panic here is a fuzz crash; reproduce it with the printed input.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, Stdio};

use fuzzing::{EXT_HINTS, decode_to_fingerprint, read_store, store_seeds};

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One libFuzzer-like mutation of `seed`: flip bytes, truncate, splice in noise, or
/// repeat a chunk.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                if !out.is_empty() {
                    let i = rng.below(out.len());
                    out[i] = rng.next() as u8;
                }
            }
        }
        1 => out.truncate(rng.below(out.len() + 1)),
        2 => {
            let at = rng.below(out.len() + 1);
            let noise: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            out.splice(at..at, noise);
        }
        _ => {
            if !out.is_empty() {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(256)).min(out.len());
                let chunk = out[start..end].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

/// Runs `target` on `input`; on a panic, saves the input where cargo-fuzz can replay it
/// and fails naming the file.
fn run(name: &str, target: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-crash-{}", fnv_hex(input)));
        std::fs::write(&saved, input).expect("save the crashing input");
        panic!(
            "{name} panicked on a {}-byte input, saved as {} (replay: cargo +nightly fuzz \
             run {name} FILE, in fuzz/)",
            input.len(),
            saved.display()
        );
    }
}

/// FNV-1a of the input, to name a saved crash.
fn fnv_hex(input: &[u8]) -> String {
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// A 16-bit PCM or 32-bit float WAV of `samples`.
fn wav(rate_hz: u32, channels: u16, float: bool, samples: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = if float {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    } else {
        samples
            .iter()
            .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
            .collect()
    };
    let bytes_per_sample: u16 = if float { 4 } else { 2 };
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&(if float { 3u16 } else { 1 }).to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate_hz.to_le_bytes());
    let block = channels * bytes_per_sample;
    b.extend_from_slice(&(rate_hz * u32::from(block)).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&(bytes_per_sample * 8).to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    b
}

/// Two seconds of a chord with a moving note, so the fingerprint finds peaks.
fn music(rate_hz: u32, channels: u16) -> Vec<f32> {
    let n = rate_hz as usize * 2;
    let mut out = Vec::with_capacity(n * usize::from(channels));
    for i in 0..n {
        let t = i as f32 / rate_hz as f32;
        let note = if t < 1.0 { 440.0 } else { 660.0 };
        let v = 0.3 * (std::f32::consts::TAU * note * t).sin()
            + 0.2 * (std::f32::consts::TAU * 1234.0 * t).sin() * (t * 7.0).sin();
        out.extend(std::iter::repeat_n(v, usize::from(channels)));
    }
    out
}

/// The index in [`EXT_HINTS`] of `ext`, as the first byte of an input.
fn hint_byte(ext: &str) -> u8 {
    EXT_HINTS
        .iter()
        .position(|h| *h == Some(ext))
        .expect("a known hint") as u8
}

/// Seeds: WAVs made here, and when ffmpeg is installed the same music in every lossy and
/// lossless format the product reads (what `fuzz/seeds.sh` gives cargo-fuzz).
fn decode_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let dir = tempfile::tempdir().expect("temporary folder");
    let source = dir.path().join("music.wav");
    let stereo = wav(44_100, 2, false, &music(44_100, 2));
    std::fs::write(&source, &stereo).expect("write the source WAV");
    seeds.push([&[hint_byte("wav")][..], &stereo].concat());
    let mut nan = music(8_000, 1);
    for (i, s) in nan.iter_mut().enumerate() {
        *s = [*s, f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 4];
    }
    seeds.push([&[hint_byte("wav")][..], &wav(8_000, 1, true, &nan)].concat());
    let have_ffmpeg = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_ffmpeg {
        eprintln!("ffmpeg is not installed: the decode smoke uses WAV seeds only");
        return seeds;
    }
    for (ext, codec) in [
        ("mp3", "libmp3lame"),
        ("flac", "flac"),
        ("ogg", "libvorbis"),
        ("opus", "libopus"),
        ("m4a", "aac"),
    ] {
        let out = dir.path().join(format!("music.{ext}"));
        let status = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&source)
            .args(["-c:a", codec])
            .arg(&out)
            .status()
            .expect("run ffmpeg");
        assert!(status.success(), "ffmpeg could not encode {ext}");
        let bytes = std::fs::read(&out).expect("read the encoded seed");
        seeds.push([&[hint_byte(ext)][..], &bytes].concat());
    }
    seeds
}

#[test]
fn decode_to_fingerprint_survives_seeds_and_mutations() {
    let seeds = decode_seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for seed in &seeds {
        run("decode_to_fingerprint", decode_to_fingerprint, seed);
    }
    // 2,000 mutants, and the same bytes under every hint for some of them.
    for i in 0..2_000 {
        let seed = &seeds[i % seeds.len()];
        let mut input = mutate(seed, &mut rng);
        if i % 10 == 0 && !input.is_empty() {
            input[0] = rng.next() as u8;
        }
        run("decode_to_fingerprint", decode_to_fingerprint, &input);
    }
    for _ in 0..200 {
        let noise: Vec<u8> = (0..rng.below(4096)).map(|_| rng.next() as u8).collect();
        run("decode_to_fingerprint", decode_to_fingerprint, &noise);
    }
}

#[test]
fn read_store_survives_seeds_and_mutations() {
    let seeds = store_seeds();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for seed in &seeds {
        run("read_store", read_store, seed);
    }
    for i in 0..1_500 {
        let input = if i % 3 == 0 {
            (0..rng.below(96)).map(|_| rng.next() as u8).collect()
        } else {
            // Several seed operations chained, then mutated.
            let mut chained = Vec::new();
            for _ in 0..1 + rng.below(3) {
                chained.extend_from_slice(&seeds[rng.below(seeds.len())]);
            }
            mutate(&chained, &mut rng)
        };
        run("read_store", read_store, &input);
    }
}
