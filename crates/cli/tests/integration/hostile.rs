//! Hostile and broken files given to `index` and `identify`: each gets a message naming it
//! or a result, never a crash; memory stays within what the audio's length explains; and
//! a file that fails leaves the store exactly as it was.

use std::path::{Path, PathBuf};

use crate::util::{
    StoreContent, TestDir, cratedigger, cratedigger_peak_rss, ffmpeg, have_tools, run_tool, sox,
};

/// What a hostile file may do.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Must fail with a message naming it, and change nothing.
    Fail,
    /// Must be indexed (it is valid audio, however odd).
    Index,
    /// Either, as long as it is one of the two cleanly (truncated files decode partially
    /// or not at all depending on where the cut falls).
    Either,
}

struct Case {
    path: PathBuf,
    expect: Expect,
    /// Seconds of audio the file holds at most; sizes the memory bound.
    audio_s: f64,
}

/// Memory `cratedigger` may use beyond what the audio needs: the binary, its threads, the
/// decoders' tables and the pages of the store it touches. Measured at 7-9 MB for a 5 s
/// file; four times that leaves room for allocator and library differences.
const BASE_RSS_BYTES: u64 = 40 << 20;

/// Memory per second of audio while fingerprinting (fingerprint crate, default
/// parameters): the 16 kHz mono f32 samples (64,000 bytes) plus two f32 planes the size
/// of the log spectrogram (the spectrogram and its maximum filter: 125 frames x 198 bins
/// x 4 bytes each), 262,000 bytes in all. An hour of silence measured 931 MB against
/// 943 MB from this; the bound allows 25% more.
const RSS_BYTES_PER_AUDIO_S: f64 = 64_000.0 + 2.0 * 125.0 * 198.0 * 4.0;

fn rss_bound(audio_s: f64) -> u64 {
    BASE_RSS_BYTES + (1.25 * RSS_BYTES_PER_AUDIO_S * audio_s) as u64
}

/// Deterministic noise (xorshift).
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A 16-bit PCM WAV header for `rate_hz` and `channels` declaring `data_len` data bytes.
fn wav_header(rate_hz: u32, channels: u16, bits: u16, format: u16, data_len: u32) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut b = Vec::with_capacity(44);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate_hz.to_le_bytes());
    b.extend_from_slice(&(rate_hz * u32::from(block)).to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    b
}

/// The corpus of the issue: truncated MP3, FLAC, Ogg and Opus; zero bytes; random bytes
/// named .mp3; a WAV whose header claims 4 GB; a float WAV of NaN and infinities; an hour
/// of silence; a 1 ms file; 192 kHz with 8 channels; a text file.
fn hostile_corpus(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, bytes: &[u8], expect: Expect, audio_s: f64| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write a hostile file");
        cases.push(Case {
            path,
            expect,
            audio_s,
        });
    };

    let music = dir.join("music.wav");
    run_tool(
        sox()
            .args(["-n", "-r", "44100", "-c", "2"])
            .arg(&music)
            .args(["synth", "10", "sine", "220-1760", "vol", "0.5"]),
    );
    for (ext, codec) in [
        ("mp3", "libmp3lame"),
        ("flac", "flac"),
        ("ogg", "libvorbis"),
        ("opus", "libopus"),
    ] {
        let full = dir.join(format!("full.{ext}"));
        run_tool(
            ffmpeg()
                .arg("-i")
                .arg(&music)
                .args(["-c:a", codec])
                .arg(&full),
        );
        let bytes = std::fs::read(&full).expect("read the encoded file");
        std::fs::remove_file(&full).expect("remove the full file");
        // Inside the headers, and a third of the way into the audio.
        add(
            &format!("head-only.{ext}"),
            &bytes[..200],
            Expect::Either,
            10.0,
        );
        let third = bytes.len() / 3;
        add(
            &format!("truncated.{ext}"),
            &bytes[..third],
            Expect::Either,
            10.0,
        );
    }
    std::fs::remove_file(&music).expect("remove the source");

    add("zero-bytes.mp3", b"", Expect::Fail, 0.0);
    add(
        "random.mp3",
        &noise(100_000, 0x2545_f491_4f6c_dd1d),
        Expect::Fail,
        0.0,
    );

    // One second of real audio under a header claiming 4 GB.
    let pcm: Vec<u8> = (0..44_100 * 2)
        .flat_map(|i: i32| ((((i / 2) % 100) * 300 - 15_000) as i16).to_le_bytes())
        .collect();
    let liar = [wav_header(44_100, 2, 16, 1, 0xFFFF_FFF0), pcm].concat();
    add("claims-4gb.wav", &liar, Expect::Index, 1.0);

    // Two seconds of 32-bit float: NaN, +-infinity and f32::MAX, nothing else.
    let hostile = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX];
    let floats: Vec<u8> = (0..88_200)
        .flat_map(|i| hostile[i % hostile.len()].to_le_bytes())
        .collect();
    let nan = [wav_header(44_100, 1, 32, 3, floats.len() as u32), floats].concat();
    add("nan-and-infinity.wav", &nan, Expect::Either, 2.0);

    let text = b"Not audio at all, just a text file with a few words in it.\n".repeat(40);
    add("notes.txt", &text, Expect::Fail, 0.0);

    // Files made by the tools.
    let silence = dir.join("hour-of-silence.flac");
    run_tool(
        ffmpeg()
            .args([
                "-f",
                "lavfi",
                "-i",
                "anullsrc=r=44100:cl=mono",
                "-t",
                "3600",
            ])
            .args(["-c:a", "flac"])
            .arg(&silence),
    );
    cases.push(Case {
        path: silence,
        expect: Expect::Index,
        audio_s: 3600.0,
    });
    let blip = dir.join("one-ms.wav");
    run_tool(
        sox()
            .args(["-n", "-r", "44100", "-c", "2"])
            .arg(&blip)
            .args(["synth", "0.001", "sine", "1000"]),
    );
    cases.push(Case {
        path: blip,
        expect: Expect::Fail,
        audio_s: 0.001,
    });
    let wide = dir.join("192k-8ch.flac");
    run_tool(
        sox()
            .args(["-n", "-r", "192000", "-c", "8", "-b", "24"])
            .arg(&wide)
            .args(["synth", "5", "sine", "300-3000", "vol", "0.5"]),
    );
    cases.push(Case {
        path: wide,
        expect: Expect::Index,
        audio_s: 5.0,
    });
    cases
}

fn name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

#[test]
fn hostile_files_get_a_message_or_a_result_in_bounded_memory_and_failures_change_nothing() {
    if !have_tools(&["sox", "ffmpeg"]) {
        return;
    }
    let dir = TestDir::new();
    let files = dir.mkdir("hostile");
    let cases = hostile_corpus(&files);

    // A store with one good track, so "unchanged" has something to compare.
    let good = dir.join("good.flac");
    run_tool(
        sox()
            .args(["-n", "-r", "44100", "-c", "2"])
            .arg(&good)
            .args(["synth", "10", "square", "330-660", "vol", "0.5"]),
    );
    let db = dir.db();
    cratedigger(&db, ["index".as_ref(), "-q".as_ref(), good.as_os_str()]).expect_code(0);
    let mut before = StoreContent::read(&db);

    let mut report = Vec::new();
    for case in &cases {
        let file = name(&case.path);
        let (out, peak) = cratedigger_peak_rss(
            &db,
            ["index".as_ref(), "-q".as_ref(), case.path.as_os_str()],
        );
        let after = StoreContent::read(&db);
        let indexed = match out.code {
            0 => true,
            1 => false,
            _ => panic!(
                "{file}: index crashed or stopped (exit {}):\n{out:?}",
                out.code
            ),
        };
        report.push(format!(
            "{file}: {} in {:.0} MB",
            if indexed { "indexed" } else { "failed" },
            peak as f64 / 1e6
        ));
        assert!(
            !out.stderr.contains("panicked"),
            "{file}: a panic message:\n{out:?}"
        );
        assert!(
            peak <= rss_bound(case.audio_s),
            "{file}: peak RSS {peak} bytes is over the bound of {} for {} s of audio",
            rss_bound(case.audio_s),
            case.audio_s
        );
        if indexed {
            assert_ne!(case.expect, Expect::Fail, "{file} was indexed:\n{out:?}");
            assert_eq!(
                after.tracks.len(),
                before.tracks.len() + 1,
                "{file}: indexing added not exactly one track"
            );
            before = after;
        } else {
            assert_ne!(case.expect, Expect::Index, "{file} failed:\n{out:?}");
            assert!(
                out.stderr
                    .lines()
                    .any(|l| l.starts_with("failed: ") && l.contains(&file)),
                "{file}: no per-file message on stderr:\n{out:?}"
            );
            assert!(after == before, "{file}: the failed file changed the store");
        }

        // The same file as a query: an answer or a message naming it.
        let out = cratedigger(
            &db,
            [
                "identify".as_ref(),
                "--json".as_ref(),
                case.path.as_os_str(),
            ],
        );
        match out.code {
            0 => assert_eq!(out.stdout.lines().count(), 1, "{file}: {out:?}"),
            1 => assert!(out.stderr.contains(&file), "{file}: {out:?}"),
            _ => panic!(
                "{file}: identify crashed or stopped (exit {}):\n{out:?}",
                out.code
            ),
        }
        assert_eq!(
            StoreContent::read(&db),
            before,
            "{file}: identify changed the store"
        );
    }
    eprintln!("{}", report.join("\n"));
}
