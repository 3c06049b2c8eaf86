//! On-disk formats: split.json, truth.json, the engine's `identify --json` output, and
//! the timings `run` records.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Track {
    /// Absolute path.
    pub path: String,
    /// Path relative to the corpus directory (what the split hash uses).
    pub rel: String,
    /// Debian package (first folder under the corpus).
    pub package: String,
    pub duration_s: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Duplicate {
    pub kept: String,
    pub dropped: String,
    /// Seconds of audio the two share at one alignment (chromaprint).
    pub shared_s: f64,
    /// Mean bit error rate of the shared windows.
    pub ber: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Split {
    pub seed: u64,
    pub corpus: String,
    /// Percentage of references in `tune` (by hash of the relative path).
    pub tune_percent: u64,
    pub tune: Vec<Track>,
    pub heldout: Vec<Track>,
    /// Music never indexed: used as the "new song" under the drums.
    pub background: Vec<Track>,
    pub drum_loops: Vec<String>,
    /// Candidates that share audio with a kept track (chromaprint); neither indexed
    /// nor used as background.
    pub duplicates: Vec<Duplicate>,
}

impl Split {
    pub fn refs(&self, split: &str) -> anyhow::Result<&[Track]> {
        match split {
            "tune" => Ok(&self.tune),
            "heldout" => Ok(&self.heldout),
            other => anyhow::bail!("unknown split {other:?} (expected tune or heldout)"),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TruthSample {
    pub ref_path: String,
    pub ref_start_s: f64,
    pub ref_end_s: f64,
    pub query_start_s: f64,
    pub query_end_s: f64,
    /// sox `speed` factor (tempo and pitch together), 1 when not a speed change.
    pub speed: f64,
    /// 1 / time ratio: > 1 means faster (speed changes count too).
    pub tempo: f64,
    pub pitch_semitones: f64,
    /// How many times the excerpt plays back to back (1 = once).
    pub loops: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TruthQuery {
    pub query: String,
    pub condition: String,
    #[serde(default)]
    pub split: String,
    #[serde(default)]
    pub suite: String,
    #[serde(default)]
    pub params: serde_json::Value,
    pub samples: Vec<TruthSample>,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize, Clone, Debug, Default)]
#[allow(
    dead_code,
    reason = "the whole engine format is parsed; scoring reads part"
)]
pub struct Occurrence {
    #[serde(default)]
    pub query_start_s: f64,
    #[serde(default)]
    pub query_end_s: f64,
    #[serde(default)]
    pub ref_start_s: f64,
    #[serde(default)]
    pub ref_end_s: f64,
}

/// One match of `cratedigger identify --json` (extra fields are ignored).
#[derive(Deserialize, Clone, Debug)]
#[allow(
    dead_code,
    reason = "the whole engine format is parsed; scoring reads part"
)]
pub struct Match {
    #[serde(default)]
    pub track_id: Option<u64>,
    pub path: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub artist: Option<String>,
    #[serde(default)]
    pub query_start_s: f64,
    #[serde(default)]
    pub query_end_s: f64,
    #[serde(default)]
    pub ref_start_s: f64,
    #[serde(default)]
    pub ref_end_s: f64,
    #[serde(default = "one")]
    pub tempo: f64,
    #[serde(default)]
    pub pitch_semitones: f64,
    #[serde(default)]
    pub speed: Option<f64>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub loop_count: Option<u64>,
    #[serde(default)]
    pub occurrences: Vec<Occurrence>,
    #[serde(default)]
    pub score: f64,
    #[serde(default)]
    pub hits: Option<u64>,
    /// Set by scoring for a match the truth does not explain: whether the reported
    /// reference holds the audio the truth puts there (`shared`).
    #[serde(skip)]
    pub shared: Option<crate::shared::Verdict>,
    /// Fields this harness does not know (e.g. a significance to calibrate on).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[allow(
    dead_code,
    reason = "the whole engine format is parsed; scoring reads part"
)]
pub struct IdentifyOutput {
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub matches: Vec<Match>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct IndexStats {
    pub files: usize,
    pub audio_s: f64,
    pub wall_s: f64,
    /// CPU time of the index processes (user + system).
    pub cpu_s: f64,
    pub db_bytes: u64,
    /// Thread-seconds per stage as the CLI reports them (read+hash, decode, fingerprint,
    /// store), summed over the index runs; absent for binaries that do not report them.
    #[serde(default)]
    pub stages_s: Option<[f64; 4]>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DecodeFloor {
    pub files: usize,
    /// `ffmpeg -v quiet -i FILE -f null -`, one file after the other.
    pub wall_s: f64,
    pub cpu_s: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IdentifyTiming {
    pub query: String,
    pub wall_s: f64,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct RunStats {
    pub bin: String,
    pub db: String,
    pub cores: usize,
    pub identify_jobs: usize,
    pub index: Option<IndexStats>,
    pub decode_floor: Option<DecodeFloor>,
    pub identify: Vec<IdentifyTiming>,
    /// `BIN --version` and the binary's modification time (seconds since the epoch),
    /// to tell results of different builds apart.
    #[serde(default)]
    pub bin_version: String,
    #[serde(default)]
    pub bin_mtime: u64,
    /// The binary was rebuilt while this run used it.
    #[serde(default)]
    pub bin_changed: bool,
}
