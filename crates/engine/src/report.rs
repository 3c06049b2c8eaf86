//! The serialisable answer of an identification: what a user or a program reads.

use index::TrackInfo;
use matcher::{MatchParams, SampleMatch};
use serde::{Deserialize, Serialize};

/// All samples found in one query.
#[derive(Clone, Debug, Serialize)]
pub struct Identification {
    /// The query's name (its path for files).
    pub query: String,
    /// Length of the query audio.
    pub duration_s: f64,
    /// Hash lookups made (the query's keys times the lookups of them: one, or one to
    /// count and one a pass).
    pub n_lookups: usize,
    /// Hits those lookups returned.
    pub n_hits: usize,
    /// Passes over the references the hits were matched in: 1 unless they outgrew the
    /// memory bound for hits (`Engine::set_identify_memory_mb`); each pass looked the
    /// query up once more.
    pub n_passes: usize,
    /// Where the time went (decoding excluded).
    pub timings: Timings,
    /// Samples found, surest first. Empty means no sample was found.
    pub matches: Vec<MatchReport>,
}

/// Seconds spent in each stage of one identification.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Peaks and quads. Decoding is not counted, and neither is the spectrogram of a file
    /// identified with [`crate::Engine::identify_file`], which is made while it decodes.
    pub fingerprint_s: f64,
    pub lookup_s: f64,
    pub match_s: f64,
    pub verify_s: f64,
}

impl Timings {
    /// Adds `other`'s seconds, stage by stage (a search made of several).
    pub(crate) fn add(&mut self, other: &Timings) {
        self.fingerprint_s += other.fingerprint_s;
        self.lookup_s += other.lookup_s;
        self.match_s += other.match_s;
        self.verify_s += other.verify_s;
    }
}

/// How a sample was transformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// Played at the original speed and pitch.
    Exact,
    /// Played faster or slower like a record: tempo and pitch changed together.
    Speed,
    /// Tempo and pitch changed independently (time-stretch and/or pitch-shift).
    Stretch,
}

/// One reference sampled by the query, with every occurrence.
#[derive(Clone, Debug, Serialize)]
pub struct MatchReport {
    pub track_id: u32,
    pub path: String,
    pub title: Option<String>,
    pub artist: Option<String>,
    pub year: Option<i32>,
    /// First occurrence's start in the query.
    pub query_start_s: f64,
    /// Last occurrence's end in the query.
    pub query_end_s: f64,
    /// Start of the sampled segment in the reference (over all occurrences).
    pub ref_start_s: f64,
    /// End of the sampled segment in the reference.
    pub ref_end_s: f64,
    /// Reference seconds per query second: 1.25 means the sample plays 25% faster.
    pub tempo: f64,
    /// Pitch shift of the sample, semitones.
    pub pitch_semitones: f64,
    /// The vinyl-style speed factor when tempo and pitch changed together, else null.
    pub speed: Option<f64>,
    pub kind: MatchKind,
    /// Number of occurrences (repetitions of a loop count one each).
    pub loop_count: usize,
    pub occurrences: Vec<matcher::Occurrence>,
    /// Estimated probability that this is a real sample (0-1), calibrated on the
    /// benchmark; see ARCHITECTURE.md, "Score".
    pub score: f64,
    /// -log10 of that chance probability.
    pub significance: f64,
    /// Peak-level verification score in nats (0 when not verified); see ARCHITECTURE.md.
    #[serde(default)]
    pub verification: f64,
    /// Hash hits supporting the match.
    pub hits: usize,
}

/// The per-occurrence detail of a match.
pub type OccurrenceReport = matcher::Occurrence;

/// Pitch within this many semitones of what the tempo implies counts as a speed change.
const SPEED_PITCH_TOLERANCE_ST: f64 = 0.4;

impl MatchReport {
    pub(crate) fn new(m: SampleMatch, info: Option<TrackInfo>, p: &MatchParams) -> Self {
        let info = info.unwrap_or_else(|| TrackInfo {
            path: format!("(removed track {})", m.track),
            content_hash: String::new(),
            duration_s: 0.0,
            title: None,
            artist: None,
            album: None,
            year: None,
            musicbrainz_recording_id: None,
            musicbrainz_release_id: None,
            n_postings: 0,
            indexed_unix_s: 0,
        });
        let implied_pitch = 12.0 * m.tempo.log2();
        let kind = if (m.tempo - 1.0).abs() < 0.005 && m.pitch_semitones.abs() < 0.25 {
            MatchKind::Exact
        } else if (m.pitch_semitones - implied_pitch).abs() <= SPEED_PITCH_TOLERANCE_ST {
            MatchKind::Speed
        } else {
            MatchKind::Stretch
        };
        let first = m.occurrences.first();
        let fold = |f: fn(&matcher::Occurrence) -> f64, min: bool| {
            m.occurrences
                .iter()
                .map(f)
                .fold(if min { f64::INFINITY } else { 0.0 }, |a, b| {
                    if min { a.min(b) } else { a.max(b) }
                })
        };
        Self {
            track_id: m.track,
            path: info.path,
            title: info.title,
            artist: info.artist,
            year: info.year,
            query_start_s: first.map_or(0.0, |o| o.query_start_s),
            query_end_s: fold(|o| o.query_end_s, false),
            ref_start_s: fold(|o| o.ref_start_s, true),
            ref_end_s: fold(|o| o.ref_end_s, false),
            tempo: m.tempo,
            pitch_semitones: m.pitch_semitones,
            speed: (kind == MatchKind::Speed).then_some(m.tempo),
            kind,
            loop_count: m.occurrences.len(),
            score: matcher::confidence(m.evidence(p)),
            significance: m.significance,
            verification: m.verification,
            hits: m.hits,
            occurrences: m.occurrences,
        }
    }
}
