//! A first stage that shortlists references on 4-peak keys, measured in the sweep
//! (`SHORTLIST=1 cratedigger-bench sweep ...`): what a two-stage design for large stores
//! would keep (BENCHMARKS.md, session 18).
//!
//! At 1,000 hours a triplet key holds ~600 postings, so identify drowns in chance hits.
//! A key of four peaks (an anchor and three partners: two time ratios, three frequency
//! differences, three loudness-order bits, 32 bits in all) is nearly unique at 7.41 h.
//! Here each query is first looked up in an in-memory index of such keys, and the
//! references its hits point at are named: by a vote (default: `SL_MIN` hits, default 4,
//! in a cell of log time factor `SL_LF`, pitch `SL_PITCH` bins and reference and query
//! time blocks of `SL_BLOCK` frames, with its neighbours), or with `SL_MATCHER=1` by the
//! matcher's own transform groups on a lower bar (`SL_MIN`, `SL_SEED`, `SL_OCC`,
//! `SL_EXT`). The triplet hits of every other reference are dropped before the usual
//! matching; the sweep prints the recall and the share of triplet hits kept.

use std::collections::{HashMap, HashSet};

/// A vote cell: reference, then the four axes' cell numbers.
type Cell = (u32, i32, i32, i32, i32);

use anyhow::Result;
use fingerprint::{Fingerprinter, Params, RefQuad};
use matcher::{Hit, MatchParams, QueryQuad};

use crate::sweep::{MemIndex, env_or, matcher_quads};

/// The 4-peak index of the references and how it is read.
pub struct Shortlist {
    fp: Fingerprinter,
    index: MemIndex,
    cells: VoteCells,
    matcher: Option<MatchParams>,
}

/// The first stage's vote: hits counted in cells of (log time factor, pitch shift,
/// reference-time block, query-time block) per reference; a reference is named when some
/// cell and its neighbours (3^4) hold `min_hits`. A sample's hits share one transform and
/// sit together in both times; chance hits spread over all four axes.
struct VoteCells {
    log_factor: f64,
    pitch_bins: f32,
    block_frames: f32,
    min_hits: u32,
    max_log_factor: f64,
    max_pitch_bins: f32,
}

/// What the first stage did for one query.
pub struct Stage {
    /// References named for the second stage.
    pub tracks: HashSet<u32>,
    /// 4-peak keys looked up and hits they returned.
    pub lookups: usize,
    pub hits: usize,
}

impl Shortlist {
    /// The fingerprinter of the 4-peak keys, if `SHORTLIST` is set: `base` with 4-peak
    /// hashes on a 2-bin frequency step and 3 order bits, which fit 32 bits.
    pub fn fingerprinter_from_env(base: &Params) -> Result<Option<Fingerprinter>> {
        if std::env::var("SHORTLIST").is_err() {
            return Ok(None);
        }
        Ok(Some(Fingerprinter::new(Params {
            hash_peaks: 4,
            quad_df_step_bins: env_or("SL_DF_STEP", 2.0) as f32,
            hash_order_bits: 3,
            ..base.clone()
        })?))
    }

    /// Indexes `per_ref` (each reference's 4-peak quads) with the stop-word cap the sweep
    /// uses (`cap_factor` times the mean list length).
    pub fn new(
        fp: Fingerprinter,
        per_ref: Vec<Vec<RefQuad>>,
        cap_factor: f64,
        base: &MatchParams,
    ) -> Self {
        let index = MemIndex::new(per_ref, cap_factor);
        eprintln!(
            "shortlist: {} 4-peak postings on {} keys (cap {})",
            index.n_postings,
            index.map.len(),
            index.cap
        );
        let cells = VoteCells {
            log_factor: env_or("SL_LF", 0.03),
            pitch_bins: env_or("SL_PITCH", 1.5) as f32,
            block_frames: env_or("SL_BLOCK", 250.0) as f32,
            min_hits: env_or("SL_MIN", 4.0) as u32,
            max_log_factor: base.max_time_factor.ln(),
            max_pitch_bins: (base.max_pitch_semitones * base.bins_per_semitone) as f32,
        };
        // `SL_MATCHER=1`: the matcher's own groups, on a lower bar, name the references
        // instead of the vote.
        let matcher = std::env::var("SL_MATCHER").is_ok().then(|| MatchParams {
            min_match_hits: env_or("SL_MIN", 3.0) as usize,
            seed_min_hits: env_or("SL_SEED", 3.0) as usize,
            min_occurrence_hits: env_or("SL_OCC", 2.0) as usize,
            min_ref_extent_frames: env_or("SL_EXT", 0.0),
            min_significance: 0.0,
            min_candidate_significance: 0.0,
            ..base.clone()
        });
        Self {
            fp,
            index,
            cells,
            matcher,
        }
    }

    /// The references whose 4-peak hits in `samples` form a transform group.
    pub fn stage(&self, samples: &[f32]) -> Stage {
        let print = self.fp.query_print(samples);
        let query = matcher_quads(&print.quads);
        let hits = self.index.hits(&print.quads);
        let n_hits = hits.len();
        let tracks = match &self.matcher {
            Some(params) => matcher::find_matches(hits, &query, params)
                .into_iter()
                .map(|m| m.track)
                .collect(),
            None => self.vote(&hits, &query),
        };
        Stage {
            tracks,
            lookups: print.quads.len(),
            hits: n_hits,
        }
    }

    fn vote(&self, hits: &[Hit], query: &[QueryQuad]) -> HashSet<u32> {
        let c = &self.cells;
        let mut counts: HashMap<Cell, u32> = HashMap::new();
        for h in hits {
            let q = &query[h.query as usize];
            let log_factor = ((q.span / h.r_span_frames()) as f64).ln();
            let pitch = q.bin - h.r_bin_bins();
            if log_factor.abs() > c.max_log_factor || pitch.abs() > c.max_pitch_bins {
                continue;
            }
            let cell = (
                h.track,
                (log_factor / c.log_factor).floor() as i32,
                (pitch / c.pitch_bins).floor() as i32,
                (h.r_time_frames() / c.block_frames).floor() as i32,
                (q.time / c.block_frames).floor() as i32,
            );
            *counts.entry(cell).or_default() += 1;
        }
        let mut tracks = HashSet::new();
        for &(track, a, b, r, t) in counts.keys() {
            if tracks.contains(&track) {
                continue;
            }
            let mut sum = 0;
            for da in -1..=1 {
                for db in -1..=1 {
                    for dr in -1..=1 {
                        for dt in -1..=1 {
                            sum += counts
                                .get(&(track, a + da, b + db, r + dr, t + dt))
                                .copied()
                                .unwrap_or(0);
                        }
                    }
                }
            }
            if sum >= c.min_hits {
                tracks.insert(track);
            }
        }
        tracks
    }
}
