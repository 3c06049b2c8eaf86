//! The library scan: every catalogued track searched for material of every other, with
//! only the pairs not examined before examined again, and what is found stored as
//! relations whose payload (the JSON [`Payload`]) this module defines.

use std::path::Path;
use std::sync::mpsc;

use index::{TrackId, TrackInfo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::report::MatchReport;
use crate::{Engine, EngineError, MatchKind, ReferenceFilter, audio_error};

/// Version of the relation payload. A payload of another version is ignored when read,
/// so a future change of shape never shows garbage, at worst a relation to rescan.
pub const PAYLOAD_VERSION: u32 = 1;

/// A match is a duplicate, not a sample, when its aligned segments cover at least this
/// share of the shorter recording...
pub const DUPLICATE_MIN_COVERAGE: f64 = 0.8;
/// ...at a tempo within this factor of 1 (1%: a re-encode or a different pressing plays
/// at the same speed; a sample slowed by 2% is a transformation someone chose)...
pub const DUPLICATE_MAX_TEMPO_DEVIATION: f64 = 0.01;
/// ...and a pitch within this many semitones of the original.
pub const DUPLICATE_MAX_PITCH_ST: f64 = 0.2;

/// What two recordings share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelationKind {
    /// Part of one recording is used in the other.
    Sample,
    /// Both are (near-)exact copies of one recording: most of the shorter one aligns with
    /// the other, unchanged in tempo and pitch.
    Duplicate,
}

/// One occurrence of a relation: where the material sits in the query and in the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub query_start_s: f64,
    pub query_end_s: f64,
    pub ref_start_s: f64,
    pub ref_end_s: f64,
    pub hits: usize,
}

/// What a scan found when it searched the query track for a reference track: one match as
/// the matcher reported it (see [`MatchReport`]), in query/reference terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoundMatch {
    pub query_start_s: f64,
    pub query_end_s: f64,
    pub ref_start_s: f64,
    pub ref_end_s: f64,
    /// Reference seconds per query second (0.8: the material plays slowed to 0.8x).
    pub tempo: f64,
    pub pitch_semitones: f64,
    /// Set when tempo and pitch moved together (a speed change).
    pub speed: Option<f64>,
    pub transform: MatchKind,
    pub loop_count: usize,
    pub occurrences: Vec<Segment>,
    pub score: f64,
    pub significance: f64,
    pub hits: usize,
}

/// The stored payload of a relation (query, reference), as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// [`PAYLOAD_VERSION`].
    pub version: u32,
    pub kind: RelationKind,
    /// Durations of both recordings when scanned, for coverage.
    pub query_duration_s: f64,
    pub reference_duration_s: f64,
    /// The matches, surest first (usually one).
    pub matches: Vec<FoundMatch>,
}

impl Payload {
    /// Reads a stored payload; `None` for a payload of another version or shape.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(bytes)
            .ok()
            .filter(|p| p.version == PAYLOAD_VERSION && !p.matches.is_empty())
    }

    /// The surest match.
    pub fn best(&self) -> &FoundMatch {
        // Decoding and building both refuse an empty list.
        &self.matches[0]
    }
}

impl FoundMatch {
    fn from_report(m: &MatchReport) -> Self {
        Self {
            query_start_s: m.query_start_s,
            query_end_s: m.query_end_s,
            ref_start_s: m.ref_start_s,
            ref_end_s: m.ref_end_s,
            tempo: m.tempo,
            pitch_semitones: m.pitch_semitones,
            speed: m.speed,
            transform: m.kind,
            loop_count: m.loop_count,
            occurrences: m
                .occurrences
                .iter()
                .map(|o| Segment {
                    query_start_s: o.query_start_s,
                    query_end_s: o.query_end_s,
                    ref_start_s: o.ref_start_s,
                    ref_end_s: o.ref_end_s,
                    hits: o.hits,
                })
                .collect(),
            score: m.score,
            significance: m.significance,
            hits: m.hits,
        }
    }
}

/// Whether matches between recordings of these durations make them duplicates: one match
/// at tempo 1 and pitch 0 (within the tolerances above) whose occurrences cover at least
/// [`DUPLICATE_MIN_COVERAGE`] of the shorter recording in both. Anything less is a sample.
pub fn classify(matches: &[FoundMatch], query_s: f64, reference_s: f64) -> RelationKind {
    let shorter_s = query_s.min(reference_s);
    let duplicate = shorter_s > 0.0
        && matches.iter().any(|m| {
            let unchanged = (m.tempo - 1.0).abs() <= DUPLICATE_MAX_TEMPO_DEVIATION
                && m.pitch_semitones.abs() <= DUPLICATE_MAX_PITCH_ST;
            let in_query = covered_s(
                m.occurrences
                    .iter()
                    .map(|o| (o.query_start_s, o.query_end_s)),
            );
            let in_ref = covered_s(m.occurrences.iter().map(|o| (o.ref_start_s, o.ref_end_s)));
            unchanged && in_query.min(in_ref) >= DUPLICATE_MIN_COVERAGE * shorter_s
        });
    if duplicate {
        RelationKind::Duplicate
    } else {
        RelationKind::Sample
    }
}

/// Length of the union of intervals.
fn covered_s(intervals: impl Iterator<Item = (f64, f64)>) -> f64 {
    let mut v: Vec<(f64, f64)> = intervals.filter(|(a, b)| b > a).collect();
    v.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (a, b) in v {
        match current {
            Some((s, e)) if a <= e => current = Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s;
                current = Some((a, b));
            }
            None => current = Some((a, b)),
        }
    }
    total + current.map_or(0.0, |(s, e)| e - s)
}

/// Progress of [`Engine::scan`].
#[derive(Debug)]
pub enum ScanEvent<'a> {
    /// About to scan this many tracks over this many (query, reference) pairs.
    Started { n_tracks: usize, n_pairs: u64 },
    /// One track searched for material of `n_pairs` others; `found` relations stored.
    Done {
        track: TrackId,
        info: &'a TrackInfo,
        n_pairs: u64,
        found: usize,
    },
    /// One track could not be scanned (its file is gone or unreadable); it keeps its old
    /// scan mark, so the next scan tries it again.
    Failed {
        track: TrackId,
        info: &'a TrackInfo,
        error: &'a EngineError,
    },
}

/// Totals of one scan.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScanSummary {
    /// Tracks in the catalogue.
    pub n_tracks: usize,
    /// Tracks searched in this scan (those with references not examined before).
    pub tracks_scanned: usize,
    /// (query, reference) pairs examined in this scan; each unordered pair of tracks is
    /// examined in both orientations, once, over all scans.
    pub pairs_examined: u64,
    /// Relations stored by this scan, by kind (a relation found in both orientations
    /// counts twice here, and shows once in the graph).
    pub samples_found: usize,
    pub duplicates_found: usize,
    /// Tracks that could not be scanned.
    pub failed: usize,
}

/// One track's scan job, decided before any decoding.
struct Job {
    id: TrackId,
    info: TrackInfo,
    examined: std::ops::RangeInclusive<TrackId>,
    n_pairs: u64,
}

impl Engine {
    /// Searches catalogued tracks for material of each other, examining only the pairs no
    /// earlier scan examined, and stores what is found as relations (replacing what was
    /// stored for those pairs).
    ///
    /// A track whose scan mark is below the highest id is decoded again from its path and
    /// identified against the tracks above its mark (all others if it was never scanned),
    /// never against itself. Tracks are processed in parallel; this thread alone writes
    /// each track's result in one transaction and reports through `on_event`. Matches below
    /// the engine's reporting threshold are not stored.
    pub fn scan(
        &self,
        on_event: &mut dyn FnMut(ScanEvent<'_>),
    ) -> Result<ScanSummary, EngineError> {
        let store = self.store();
        let tracks = store.tracks()?;
        let ids: Vec<TrackId> = tracks.iter().map(|(id, _)| *id).collect();
        let mut summary = ScanSummary {
            n_tracks: tracks.len(),
            ..ScanSummary::default()
        };
        let Some(&max_id) = ids.last() else {
            on_event(ScanEvent::Started {
                n_tracks: 0,
                n_pairs: 0,
            });
            return Ok(summary);
        };
        let mut jobs = Vec::new();
        for (id, info) in tracks {
            let from = match store.scan_mark(id)? {
                Some(mark) if mark >= max_id => continue,
                Some(mark) => mark + 1,
                None => 0,
            };
            // Catalogued tracks in from..=max_id other than this one; ids are sorted.
            let lo = ids.partition_point(|&x| x < from);
            let n_pairs = (ids.len() - lo) as u64 - u64::from(id >= from);
            jobs.push(Job {
                id,
                info,
                examined: from..=max_id,
                n_pairs,
            });
        }
        on_event(ScanEvent::Started {
            n_tracks: jobs.len(),
            n_pairs: jobs.iter().map(|j| j.n_pairs).sum(),
        });
        let (tx, rx) =
            mpsc::sync_channel::<(usize, Result<Vec<(TrackId, Vec<u8>)>, EngineError>)>(4);
        std::thread::scope(|scope| {
            let jobs = &jobs;
            scope.spawn(move || {
                jobs.par_iter()
                    .enumerate()
                    .for_each_with(tx, |tx, (i, job)| {
                        // The receiver lives until every sender is gone.
                        let _ = tx.send((i, self.scan_one(job)));
                    });
            });
            for (i, result) in rx {
                let job = &jobs[i];
                let recorded = result.and_then(|found| {
                    store.record_scan(job.id, job.examined.clone(), &found)?;
                    Ok(found)
                });
                match recorded {
                    Ok(found) => {
                        summary.tracks_scanned += 1;
                        summary.pairs_examined += job.n_pairs;
                        for (_, payload) in &found {
                            match Payload::decode(payload).map(|p| p.kind) {
                                Some(RelationKind::Duplicate) => summary.duplicates_found += 1,
                                _ => summary.samples_found += 1,
                            }
                        }
                        on_event(ScanEvent::Done {
                            track: job.id,
                            info: &job.info,
                            n_pairs: job.n_pairs,
                            found: found.len(),
                        });
                    }
                    Err(error) => {
                        summary.failed += 1;
                        on_event(ScanEvent::Failed {
                            track: job.id,
                            info: &job.info,
                            error: &error,
                        });
                    }
                }
            }
        });
        Ok(summary)
    }

    /// Identifies one track against its job's references; returns the relations to store.
    fn scan_one(&self, job: &Job) -> Result<Vec<(TrackId, Vec<u8>)>, EngineError> {
        if job.n_pairs == 0 {
            return Ok(Vec::new());
        }
        let path = Path::new(&job.info.path);
        let (decoded, _) = audio::decode_file(path, &self.decode).map_err(audio_error(path))?;
        let filter = ReferenceFilter {
            ids: job.examined.clone(),
            exclude: Some(job.id),
        };
        let found = self.identify_samples_among(&job.info.path, &decoded.samples, &filter)?;
        // The matcher may report one reference at several transforms; group them.
        let mut by_reference: Vec<(TrackId, Vec<FoundMatch>, f64)> = Vec::new();
        for m in &found.matches {
            let fm = FoundMatch::from_report(m);
            match by_reference.iter_mut().find(|(r, _, _)| *r == m.track_id) {
                Some((_, list, _)) => list.push(fm),
                None => {
                    let ref_s = self
                        .store()
                        .track(m.track_id)?
                        .map_or(0.0, |t| t.duration_s);
                    by_reference.push((m.track_id, vec![fm], ref_s));
                }
            }
        }
        let mut out = Vec::with_capacity(by_reference.len());
        for (reference, mut matches, reference_duration_s) in by_reference {
            matches.sort_by(|a, b| b.score.total_cmp(&a.score));
            let payload = Payload {
                version: PAYLOAD_VERSION,
                kind: classify(&matches, decoded.duration_s, reference_duration_s),
                query_duration_s: decoded.duration_s,
                reference_duration_s,
                matches,
            };
            let bytes =
                serde_json::to_vec(&payload).map_err(|e| EngineError::Encode(e.to_string()))?;
            out.push((reference, bytes));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(tempo: f64, pitch: f64, segments: &[(f64, f64, f64, f64)]) -> FoundMatch {
        FoundMatch {
            query_start_s: segments[0].0,
            query_end_s: segments[segments.len() - 1].1,
            ref_start_s: segments[0].2,
            ref_end_s: segments[0].3,
            tempo,
            pitch_semitones: pitch,
            speed: None,
            transform: MatchKind::Exact,
            loop_count: segments.len(),
            occurrences: segments
                .iter()
                .map(|&(a, b, c, d)| Segment {
                    query_start_s: a,
                    query_end_s: b,
                    ref_start_s: c,
                    ref_end_s: d,
                    hits: 10,
                })
                .collect(),
            score: 1.0,
            significance: 100.0,
            hits: 10,
        }
    }

    #[test]
    fn a_whole_copy_is_a_duplicate_and_an_excerpt_is_a_sample() {
        // A re-encode: 170 of 180 s aligned, unchanged.
        let copy = found(1.001, 0.02, &[(2.0, 172.0, 2.0, 172.0)]);
        assert_eq!(classify(&[copy], 180.0, 180.5), RelationKind::Duplicate);
        // A 20 s excerpt of a 3-minute song inside another 3-minute song.
        let excerpt = found(1.0, 0.0, &[(30.0, 50.0, 60.0, 80.0)]);
        assert_eq!(classify(&[excerpt], 200.0, 180.0), RelationKind::Sample);
        // A whole song slowed by 3%: a transformation, so a sample.
        let slowed = found(0.97, -0.5, &[(0.0, 185.0, 0.0, 179.0)]);
        assert_eq!(classify(&[slowed], 186.0, 180.0), RelationKind::Sample);
        // A loop of 8 s repeated ten times covers 80 s of the query but 8 s of the
        // reference: a sample.
        let looped: Vec<(f64, f64, f64, f64)> = (0..10)
            .map(|i| (8.0 * i as f64, 8.0 * (i + 1) as f64, 40.0, 48.0))
            .collect();
        assert_eq!(
            classify(&[found(1.0, 0.0, &looped)], 90.0, 95.0),
            RelationKind::Sample
        );
    }

    #[test]
    fn coverage_merges_overlapping_segments() {
        let v = [
            (0.0, 10.0),
            (5.0, 15.0),
            (20.0, 30.0),
            (1.0, 2.0),
            (3.0, 3.0),
        ];
        assert!((covered_s(v.into_iter()) - 25.0).abs() < 1e-9);
        assert_eq!(covered_s(std::iter::empty()), 0.0);
    }

    #[test]
    fn payloads_round_trip_and_foreign_ones_are_ignored() {
        let p = Payload {
            version: PAYLOAD_VERSION,
            kind: RelationKind::Sample,
            query_duration_s: 30.0,
            reference_duration_s: 120.0,
            matches: vec![found(0.8, -3.86, &[(6.0, 16.0, 40.0, 48.0)])],
        };
        let bytes = serde_json::to_vec(&p).expect("encodes");
        assert_eq!(Payload::decode(&bytes), Some(p.clone()));
        let mut other = p;
        other.version = PAYLOAD_VERSION + 1;
        let bytes = serde_json::to_vec(&other).expect("encodes");
        assert_eq!(Payload::decode(&bytes), None);
        assert_eq!(Payload::decode(b"not json"), None);
    }
}
