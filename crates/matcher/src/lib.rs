//! Turns fingerprint hits into verified sample occurrences: which reference, where in
//! both recordings, at what time factor and pitch shift, how many times, and how sure.
//!
//! A hit pairs a query quad with a reference quad of equal hash. Each hit alone says
//! roughly how the reference was transformed: the ratio of the two quads' time spans is
//! the time factor, the difference of their anchor bins is the pitch shift. Hits of a real
//! sample agree on both and, in addition, line up on `q = a * r + b` (query time against
//! reference time) for one slope `a` and one intercept `b` per repetition of a loop. Chance
//! hits agree on nothing. The matcher therefore:
//! 1. votes per reference track in a (log time factor, pitch shift) histogram;
//! 2. for each strong cell, clusters the hits by intercept `b`, one cluster per
//!    occurrence (a loop repeated eight times gives eight clusters at one slope);
//! 3. fits one common slope over all clusters (pooled within-cluster regression), so every
//!    repetition of a loop sharpens the tempo estimate, then one intercept per cluster;
//! 4. keeps the inliers of those lines and scores the whole group against a Poisson model
//!    of chance hits, corrected for the number of places it could have been found.
//!
//! This crate does no IO.

pub mod radix;
mod score;
pub mod verify;

use rayon::prelude::*;

pub use score::{confidence, significance};

/// A query quad as the matcher sees it; hits name it by its index in the query's quads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryQuad {
    /// Anchor time in frames.
    pub time: f32,
    /// Anchor log-frequency bin.
    pub bin: f32,
    /// Span in frames.
    pub span: f32,
}

/// One hash match between a query quad and a stored reference quad.
///
/// A long query against a large library gives millions of hits (5.1 million for 3 minutes
/// against 12 hours), so a hit is 16 bytes: the query side is an index into the query's
/// quads, and the reference side is kept in the store's own fixed point, which loses
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hit {
    /// Reference track.
    pub track: u32,
    /// Index of the query quad in the quads passed along with the hits.
    pub query: u32,
    /// Reference anchor time in frames.
    pub r_time: u32,
    /// Reference anchor log-frequency bin in 1/[`REF_BIN_SCALE`] bin.
    pub r_bin: u16,
    /// Reference quad span in 1/[`REF_SPAN_SCALE`] frame.
    pub r_span: u16,
}

// Hits are most of identify's memory; a wider hit should be a deliberate choice.
const _: () = assert!(std::mem::size_of::<Hit>() == 16);

/// Fixed-point scale of [`Hit::r_bin`] (the store's: 1/64 bin).
pub const REF_BIN_SCALE: f32 = 64.0;
/// Fixed-point scale of [`Hit::r_span`] (the store's: 1/16 frame).
pub const REF_SPAN_SCALE: f32 = 16.0;

/// Sorts one track's hits by their content (query quad, reference time, then the rest):
/// the order matching adds their numbers up in then depends on the hits alone, not on how
/// they were sharded or which other tracks' hits shared the shards, so a track matched in
/// a pass of its own, or from any number of shards, gives the same result to the last
/// bit. One u64 key (radix-sorted, with `scratch` as working space) and a fix-up of the
/// rare runs it leaves tied.
fn sort_track_hits(hits: &mut Vec<Hit>, scratch: &mut Vec<Hit>) {
    // The time's bits right below the query's, so that no bit between them costs a pass.
    let time_bits = hits
        .iter()
        .map(|h| h.r_time)
        .max()
        .map_or(0, |t| u32::BITS - t.leading_zeros());
    radix::sort_by_key(hits, scratch, |h| {
        (u64::from(h.query) << time_bits) | u64::from(h.r_time)
    });
    for run in hits.chunk_by_mut(|a, b| a.query == b.query && a.r_time == b.r_time) {
        if run.len() > 1 {
            run.sort_unstable_by_key(|h| (h.r_bin, h.r_span, h.track));
        }
    }
}

impl Hit {
    /// Reference anchor time in frames.
    #[inline]
    pub fn r_time_frames(&self) -> f32 {
        self.r_time as f32
    }

    /// Reference anchor log-frequency bin.
    #[inline]
    pub fn r_bin_bins(&self) -> f32 {
        self.r_bin as f32 / REF_BIN_SCALE
    }

    /// Reference quad span in frames.
    #[inline]
    pub fn r_span_frames(&self) -> f32 {
        self.r_span as f32 / REF_SPAN_SCALE
    }
}

/// Settings of the matcher.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchParams {
    /// Seconds per frame of the fingerprint.
    pub frame_s: f64,
    /// Log-frequency bins per semitone of the fingerprint.
    pub bins_per_semitone: f64,
    /// Largest time factor searched, either way.
    pub max_time_factor: f64,
    /// Largest pitch shift searched, either way.
    pub max_pitch_semitones: f64,
    /// Width of a histogram cell in natural-log time factor.
    pub log_factor_cell: f64,
    /// Width of a histogram cell in pitch bins.
    pub pitch_cell_bins: f64,
    /// Length of a reference block of the vote, in frames.
    pub ref_block_frames: f64,
    /// Hits whose intercepts lie closer than this many frames chain into one cluster.
    pub cluster_gap_frames: f64,
    /// A hit is an inlier of a fitted line within this many frames.
    pub inlier_frames: f64,
    /// An occurrence needs at least this many inlier hits...
    pub min_occurrence_hits: usize,
    /// ...and a match at least this many over all its occurrences.
    pub min_match_hits: usize,
    /// The matched anchors must span at least this many reference frames (50, 0.4 s):
    /// shorter material (a single drum hit) cannot be told from chance rhythmic
    /// coincidence. It was 1 s before verification existed; a looped one-bar drum pattern
    /// (sonic-pi's loop_perc1, 2.5 s) matches within 0.5-0.9 s of its reference, and
    /// 0.4 s found it in 11 of 12 queries with no new chance on the benchmark or on whole
    /// songs (BENCHMARKS.md, session 12).
    pub min_ref_extent_frames: f64,
    /// The slope fit takes a cluster as its runs of hits no more than this many reference
    /// frames apart (see `pooled_slope`). Off (infinite) by default: 1000 (8 s) fixed one
    /// benchmark sample whose tempo a distant chance pair had tilted by 1.4%, but chance
    /// lines fitted as precisely verified higher too, and whole songs got 3 false
    /// matches in 110 (BENCHMARKS.md, session 7).
    pub slope_run_gap_frames: f64,
    /// When positive, candidates are seeded by a vote that also asks hits to agree on the
    /// query time of their reference block, in cells of this many frames (see
    /// `intercept_seeds`); 0 seeds by (time factor, pitch, block) alone.
    pub seed_intercept_frames: f64,
    /// Hits an intercept seed needs in its neighbourhood.
    pub seed_min_hits: usize,
    /// At most this many vote cells are examined per track (strong real samples have one
    /// or two; the rest are chance).
    pub max_cells_per_track: usize,
    /// Reference block of the intercept seeds, in frames.
    pub seed_block_frames: f64,
    /// Weak candidates: beyond the `max_cells_per_track` strongest cells, up to this many
    /// more are examined whose transform is one that samplers use (a change of speed,
    /// tempo alone or pitch alone: [`on_sampler_line`]), from seeds of
    /// [`WEAK_SEED_HITS`] and with occurrences of [`WEAK_OCCURRENCE_HITS`] and matches of
    /// [`WEAK_MATCH_HITS`] hits, over `weak_reach_frames` either side of their seed
    /// only, and reported on their peaks only ([`SampleMatch::weak_seed`]). Off (0) by
    /// default. Session 23's version (the whole reference, hits counted) found 3 more of
    /// held-out core's 42 samples but passed a false match on a whole song (significance
    /// 54 from 83 hits over 10 minutes; its peaks scored 24 nats) and took a 3-minute
    /// song at 10 h from 0.83 to 1.49 s; this one, at 64, finds 2 more in the sweep and
    /// 1 more through the CLI (none on the tune split, the full suites or with
    /// `--deep`), passes no false match on whole songs, and costs a quarter more time
    /// (BENCHMARKS.md, session 24). With every transform allowed, a chance line at
    /// tempo 0.547 and +4.46 semitones verified at 89.8 nats (session 23).
    pub weak_cells_per_track: usize,
    /// Reference frames either side of a weak candidate's seed block over which its
    /// transform's hits are gathered (2000, 16 s: a sample's hits lie together; over a
    /// whole reference the transform's chance hits add up, and cost time).
    pub weak_reach_frames: f64,
    /// A match is reported when its corrected significance (-log10 of the chance
    /// probability) reaches this...
    pub min_significance: f64,
    /// ...or when its significance reaches this and peak-level verification
    /// ([`verify`]) scores at least `min_verification` nats. 0 by default (every
    /// candidate is verified): with 4 hits a match (`min_match_hits`, was 6) from seeds of
    /// 3 (was 4), and this at 0 (was 7), the benchmark found 7 more of its 332 samples
    /// (tune and held-out splits, core and full suites) with no stronger chance on its
    /// queries (42 nats at most), and whole songs that sample nothing met no new chance
    /// line over 55 nats (BENCHMARKS.md, session 19). Weak candidates are screened before
    /// their full verification (`VerifyParams::screen_nats`).
    pub min_candidate_significance: f64,
    /// See `min_candidate_significance`.
    pub min_verification: f64,
    /// A match significant on its hits alone is still dropped when peak-level
    /// verification ran and scored under this many nats: its hits then line up as well a
    /// beat or a few away (the null lines take all of its score), the mark of two
    /// recordings in one tempo built from the same kind of loops rather than of shared
    /// audio. Whole songs met one such match at 1.2 nats (warzone2100's track10 against
    /// track8, significance 101; their waveforms do not correlate); the weakest true sample
    /// carried by its hits on the benchmark verifies at 12.5, a loop at 5.5, and loops are
    /// exempt (`verify::is_loop`: their null lines meet their own repetitions and beats)
    /// (BENCHMARKS.md, session 12).
    pub min_hash_verification: f64,
    /// Settings of the verification.
    pub verify: verify::VerifyParams,
}

impl Default for MatchParams {
    fn default() -> Self {
        Self {
            frame_s: 0.008,
            bins_per_semitone: 3.0,
            max_time_factor: 2.05,
            max_pitch_semitones: 12.5,
            log_factor_cell: 0.03,
            pitch_cell_bins: 1.0,
            ref_block_frames: 256.0,
            cluster_gap_frames: 6.0,
            inlier_frames: 4.0,
            min_occurrence_hits: 3,
            min_match_hits: 4,
            min_ref_extent_frames: 50.0,
            slope_run_gap_frames: f64::INFINITY,
            seed_intercept_frames: 8.0,
            seed_min_hits: 3,
            seed_block_frames: 256.0,
            max_cells_per_track: 32,
            weak_cells_per_track: 0,
            weak_reach_frames: 2000.0,
            min_significance: score::CONFIDENCE_MIDPOINT,
            min_candidate_significance: 0.0,
            min_verification: verify::VERIFICATION_MIDPOINT,
            min_hash_verification: 6.0,
            verify: verify::VerifyParams::default(),
        }
    }
}

/// One place where a reference segment sits in the query.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Occurrence {
    /// Start of the segment in the query, seconds.
    pub query_start_s: f64,
    /// End of the segment in the query, seconds.
    pub query_end_s: f64,
    /// Start of the segment in the reference, seconds.
    pub ref_start_s: f64,
    /// End of the segment in the reference, seconds.
    pub ref_end_s: f64,
    /// Inlier hits supporting this occurrence.
    pub hits: usize,
}

/// A reference the query samples, with every occurrence at one transform.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampleMatch {
    /// Reference track.
    pub track: u32,
    /// Reference seconds per query second (> 1: the sample plays faster in the query).
    pub tempo: f64,
    /// Pitch shift of the sample in the query, semitones.
    pub pitch_semitones: f64,
    /// Occurrences in query order.
    pub occurrences: Vec<Occurrence>,
    /// Distinct reference quads matched over all occurrences (a quad hit once per loop
    /// repetition counts once).
    pub hits: usize,
    /// -log10 of the probability that chance hits would form a group this strong anywhere
    /// in this query (corrected for the number of places searched).
    pub significance: f64,
    /// Peak-level verification score in nats ([`verify`]); 0 when not verified.
    pub verification: f64,
    /// Whether peak-level verification ran (the reference's peaks were at hand).
    pub verified: bool,
    /// Whether the match grew from a weak candidate's seed
    /// ([`MatchParams::weak_cells_per_track`]): its transform was picked among many after
    /// the hits were seen, so its significance does not count and only its peaks can
    /// carry it ([`SampleMatch::stands_on_hits`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub weak_seed: bool,
}

impl SampleMatch {
    /// Whether the match's hits alone are significant enough to report it
    /// (`min_significance`): never for a weak candidate's ([`Self::weak_seed`]). Over a
    /// 10-minute song, a weak seed's transform gathered 83 chance hits (significance 54)
    /// that the peaks did not confirm (24 nats) (BENCHMARKS.md, session 23).
    pub fn stands_on_hits(&self, p: &MatchParams) -> bool {
        !self.weak_seed && self.significance >= p.min_significance
    }

    /// Whether the match is strong enough to report: significant on its hits alone (and,
    /// when verified, not contradicted by its peaks: `min_hash_verification`), or a
    /// candidate that peak-level verification confirms.
    pub fn is_accepted(&self, p: &MatchParams) -> bool {
        let on_hits = self.stands_on_hits(p)
            && (!self.verified
                || self.verification >= p.min_hash_verification
                || verify::is_loop(self));
        on_hits
            || (self.significance >= p.min_candidate_significance
                && self.verification >= p.min_verification)
    }

    /// The match's evidence on the significance scale: its significance, or for a
    /// verified candidate the verification score mapped so that its threshold lands on the
    /// significance threshold ([`verify::VERIFICATION_MIDPOINT`] nats -> 50), whichever
    /// is larger. [`confidence`] of this is the reported score. A weak candidate's
    /// significance does not count ([`Self::stands_on_hits`]): its evidence is its
    /// verification's alone, and 0 unverified.
    pub fn evidence(&self, p: &MatchParams) -> f64 {
        let on_hits = if self.weak_seed {
            0.0
        } else {
            self.significance
        };
        if self.significance < p.min_candidate_significance || self.verification <= 0.0 {
            return on_hits;
        }
        let mapped = p.min_significance
            + (self.verification - p.min_verification) * score::CONFIDENCE_WIDTH
                / verify::VERIFICATION_WIDTH;
        on_hits.max(mapped)
    }
}

/// Orders verified candidates by evidence and drops those that only repeat a stronger
/// match of the same track elsewhere in the reference (verification may have widened
/// occurrences, so this is checked again after it); `accepted_only` also drops those
/// that are not [`SampleMatch::is_accepted`].
pub fn finish_verified(
    mut matches: Vec<SampleMatch>,
    p: &MatchParams,
    accepted_only: bool,
) -> Vec<SampleMatch> {
    if accepted_only {
        matches.retain(|m| m.is_accepted(p));
    }
    matches.sort_by(|a, b| b.evidence(p).total_cmp(&a.evidence(p)));
    suppress_alternate_locations(matches, f64::NEG_INFINITY)
}

/// Like [`find_matches`], but keeps every group down to `min_candidate_significance`:
/// the candidates that peak-level verification then confirms or drops.
pub fn find_candidates(hits: Vec<Hit>, query: &[QueryQuad], p: &MatchParams) -> Vec<SampleMatch> {
    find_candidates_sharded(vec![hits], query, p)
}

/// [`find_candidates`] over sharded hits, as [`find_matches_sharded`] takes them.
pub fn find_candidates_sharded(
    shards: Vec<Vec<Hit>>,
    query: &[QueryQuad],
    p: &MatchParams,
) -> Vec<SampleMatch> {
    candidates_in_scope(shards, query, p, None)
}

/// [`find_candidates_sharded`] for one pass of a query matched in several: `shards` hold
/// the hits of some of the references only, and `scope` describes all of the query's
/// plausible hits. A query whose hits would not fit in memory at once is matched one range
/// of references at a time; since every reference is matched on its own hits and the
/// scope carries what is counted over all of them, the passes' candidates, joined in
/// reference order, are those one pass would have found, each reference's in the same
/// order, provided that: each reference's hits are all in one pass; the passes are
/// disjoint ranges of references; and `scope` was counted over the hits that
/// [`TransformRange`] admits, with the same [`MatchParams::min_match_hits`].
pub fn find_candidates_in_pass(
    shards: Vec<Vec<Hit>>,
    query: &[QueryQuad],
    p: &MatchParams,
    scope: PassScope,
) -> Vec<SampleMatch> {
    candidates_in_scope(shards, query, p, Some(scope))
}

/// The groups down to `min_candidate_significance`, of which only those that stand on
/// their hits (`min_significance`) hide weaker ones elsewhere in their reference.
fn candidates_in_scope(
    shards: Vec<Vec<Hit>>,
    query: &[QueryQuad],
    p: &MatchParams,
    scope: Option<PassScope>,
) -> Vec<SampleMatch> {
    let lowered = MatchParams {
        min_significance: p.min_significance.min(p.min_candidate_significance),
        ..p.clone()
    };
    matches_in_scope(shards, query, &lowered, scope, p.min_significance)
}

/// What matching takes from all of a query's plausible hits (those [`TransformRange`]
/// admits), not just one reference's: the
/// query's extent (the chance rates' time base) and how many references were hit at all
/// (the places searched).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassScope {
    /// One past the latest query time, in frames, of any plausible hit.
    pub query_frames: f64,
    /// References with at least [`MatchParams::min_match_hits`] plausible hits (at least 1).
    pub n_tracks_hit: usize,
}

impl PassScope {
    /// The scope of plausible hits counted per reference (`hits_per_track`, one count a
    /// reference) whose latest query time is `latest_query_time` (`None` without hits).
    pub fn from_counts(
        hits_per_track: impl IntoIterator<Item = usize>,
        latest_query_time: Option<f32>,
        p: &MatchParams,
    ) -> Self {
        let n_tracks_hit = hits_per_track
            .into_iter()
            .filter(|&n| n >= p.min_match_hits)
            .count();
        Self {
            query_frames: latest_query_time.unwrap_or(0.0).max(0.0) as f64 + 1.0,
            n_tracks_hit: n_tracks_hit.max(1),
        }
    }
}

/// The transforms searched (time factor and pitch shift), as a test on hits: only hits
/// within it are matched, so only they are counted or kept.
#[derive(Clone, Copy, Debug)]
pub struct TransformRange {
    min_factor: f64,
    max_factor: f64,
    max_pitch_bins: f64,
}

impl TransformRange {
    /// The range `p` searches.
    pub fn new(p: &MatchParams) -> Self {
        Self {
            min_factor: 1.0 / p.max_time_factor,
            max_factor: p.max_time_factor,
            max_pitch_bins: p.max_pitch_semitones * p.bins_per_semitone,
        }
    }

    /// Whether the transform `h` implies lies within the range.
    ///
    /// # Panics
    ///
    /// If `h.query` is not an index into `query`.
    #[inline]
    pub fn admits(&self, h: &Hit, query: &[QueryQuad]) -> bool {
        let q = &query[h.query as usize];
        let r_span = h.r_span_frames();
        let factor = (q.span / r_span) as f64;
        q.span > 0.0
            && r_span > 0.0
            && (self.min_factor..=self.max_factor).contains(&factor)
            && ((q.bin - h.r_bin_bins()) as f64).abs() <= self.max_pitch_bins
    }
}

/// Finds every sample occurrence the hits support, strongest first. `query` holds the
/// query quads that [`Hit::query`] indexes.
///
/// # Panics
///
/// If a hit's `query` is not an index into `query`.
pub fn find_matches(hits: Vec<Hit>, query: &[QueryQuad], p: &MatchParams) -> Vec<SampleMatch> {
    find_matches_sharded(vec![hits], query, p)
}

/// [`find_matches`] over hits that arrive in several vectors (a store's lookup shards, see
/// `index::Store::lookup_sharded`), without first copying them into one: each shard is
/// filtered and ordered by track in parallel, and a track's hits are gathered from the
/// shards and sorted by content. The result depends on the hits only (as a multiset),
/// not on how they were sharded or ordered.
///
/// # Panics
///
/// If a hit's `query` is not an index into `query`.
pub fn find_matches_sharded(
    shards: Vec<Vec<Hit>>,
    query: &[QueryQuad],
    p: &MatchParams,
) -> Vec<SampleMatch> {
    matches_in_scope(shards, query, p, None, p.min_significance)
}

/// [`find_matches_sharded`]; `scope` replaces what would otherwise be counted over
/// `shards` (see [`find_candidates_in_pass`]).
///
/// Only a match of significance `shadow_from` or more hides a weaker one at another place
/// of its reference (see [`suppress_alternate_locations`]).
fn matches_in_scope(
    mut shards: Vec<Vec<Hit>>,
    query: &[QueryQuad],
    p: &MatchParams,
    scope: Option<PassScope>,
    shadow_from: f64,
) -> Vec<SampleMatch> {
    let range = TransformRange::new(p);
    // Each shard keeps its plausible hits, noting the latest query time among them (the
    // query quad is at hand there), and is ordered by track.
    let latest_query_time = shards
        .par_iter_mut()
        .map(|hits| {
            let mut latest: Option<f32> = None;
            hits.retain(|h| {
                let admitted = range.admits(h, query);
                if admitted {
                    let time = query[h.query as usize].time;
                    latest = Some(latest.map_or(time, |t| t.max(time)));
                }
                admitted
            });
            hits.sort_unstable_by_key(|h| h.track);
            latest
        })
        .reduce(
            || None,
            |a, b| match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        );
    // Each track's stretch of each shard, as (track, shard, start, end), by track and
    // then shard.
    let mut spans: Vec<(u32, usize, usize, usize)> = Vec::new();
    for (s, hits) in shards.iter().enumerate() {
        let mut start = 0;
        for c in hits.chunk_by(|a, b| a.track == b.track) {
            spans.push((c[0].track, s, start, start + c.len()));
            start += c.len();
        }
    }
    spans.sort_unstable();
    let n_hits = |parts: &[(u32, usize, usize, usize)]| -> usize {
        parts.iter().map(|&(_, _, a, b)| b - a).sum()
    };
    // Without a scope these hits are all of the query's: the scope is counted over them,
    // exactly as a pass's scope is counted over every pass's hits.
    let PassScope {
        query_frames,
        n_tracks_hit,
    } = scope.unwrap_or_else(|| {
        PassScope::from_counts(
            spans.chunk_by(|a, b| a.0 == b.0).map(n_hits),
            latest_query_time,
            p,
        )
    });
    let tracks: Vec<&[(u32, usize, usize, usize)]> = spans
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|parts| n_hits(parts) >= p.min_match_hits)
        .collect();
    // Tracks are independent, so they are matched in parallel.
    let mut out: Vec<SampleMatch> = tracks
        .par_iter()
        .map_init(Scratch::default, |scratch, parts| {
            let slice = |&(_, s, a, b): &(u32, usize, usize, usize)| &shards[s][a..b];
            let mut track_hits = std::mem::take(&mut scratch.hits);
            track_hits.clear();
            track_hits.extend(parts.iter().flat_map(slice).copied());
            sort_track_hits(&mut track_hits, &mut scratch.sorting);
            let found = match_track(&track_hits, query, p, query_frames, n_tracks_hit, scratch);
            scratch.hits = track_hits;
            found
        })
        .flatten_iter()
        .collect();
    out.sort_by(|a, b| b.significance.total_cmp(&a.significance));
    suppress_alternate_locations(out, shadow_from)
}

/// Drops a match that shares most of its stretch of the query with a stronger match of
/// the same track: the reference contains that material twice (a repeated chorus), and the
/// weaker line is the same sample seen at the other place, not a second sample. Only a
/// match of significance `shadow_from` or more hides another: before verification a
/// candidate weaker than that may be chance, and the true place of a weak sample must
/// not be lost to it (candidates are checked again by evidence after verification, in
/// [`finish_verified`]).
fn suppress_alternate_locations(matches: Vec<SampleMatch>, shadow_from: f64) -> Vec<SampleMatch> {
    let mut kept: Vec<SampleMatch> = Vec::with_capacity(matches.len());
    for m in matches {
        let shadowed = kept
            .iter()
            .filter(|k| k.track == m.track && !k.weak_seed && k.significance >= shadow_from)
            .any(|k| {
                let covered: f64 = m
                    .occurrences
                    .iter()
                    .map(|o| {
                        k.occurrences
                            .iter()
                            .map(|ko| {
                                (o.query_end_s.min(ko.query_end_s)
                                    - o.query_start_s.max(ko.query_start_s))
                                .max(0.0)
                            })
                            .sum::<f64>()
                    })
                    .sum();
                let length = |x: &SampleMatch| -> f64 {
                    x.occurrences
                        .iter()
                        .map(|o| o.query_end_s - o.query_start_s)
                        .sum()
                };
                // Half of the shorter of the two: verification may widen a weak line over
                // more of the query than the sample holds.
                covered > 0.5 * length(&m).min(length(k))
            });
        if !shadowed {
            kept.push(m);
        }
    }
    kept
}

/// Joins occurrences that continue each other in both recordings (a gap in the hits, not
/// a cut): the next one starts within `max_gap_s` of the previous end in the query, and
/// the reference resumes where the tempo says it should.
fn merge_continuations(mut occ: Vec<Occurrence>, tempo: f64, max_gap_s: f64) -> Vec<Occurrence> {
    occ.sort_by(|a, b| a.query_start_s.total_cmp(&b.query_start_s));
    let mut out: Vec<Occurrence> = Vec::with_capacity(occ.len());
    for o in occ {
        if let Some(last) = out.last_mut() {
            let q_gap = o.query_start_s - last.query_end_s;
            let r_gap = o.ref_start_s - last.ref_end_s;
            if q_gap <= max_gap_s && (r_gap - q_gap * tempo).abs() <= CONTINUITY_TOLERANCE_S {
                last.query_end_s = last.query_end_s.max(o.query_end_s);
                last.ref_end_s = last.ref_end_s.max(o.ref_end_s);
                last.ref_start_s = last.ref_start_s.min(o.ref_start_s);
                last.hits += o.hits;
                continue;
            }
        }
        out.push(o);
    }
    out
}

/// Drops occurrences that are far weaker than the strongest one and use another part of
/// the reference: a reference that repeats its own bars lets the edge of an excerpt match
/// the neighbouring bar too. Repetitions of a loop reuse the strongest occurrence's part
/// of the reference and are kept however weak.
fn drop_weak_echoes(occ: Vec<Occurrence>) -> Vec<Occurrence> {
    let Some(best) = occ.iter().max_by_key(|o| o.hits).cloned() else {
        return occ;
    };
    occ.into_iter()
        .filter(|o| {
            let shares_reference = o.ref_start_s < best.ref_end_s && best.ref_start_s < o.ref_end_s;
            shares_reference || o.hits as f64 >= WEAK_ECHO_FRACTION * best.hits as f64
        })
        .collect()
}

/// An occurrence elsewhere in the reference with less than this fraction of the strongest
/// occurrence's hits is taken for an echo.
const WEAK_ECHO_FRACTION: f64 = 0.34;

/// How far (seconds) the reference may jump between two pieces for them to count as one
/// continuous use: above the quads' own time spread, below any musical edit.
const CONTINUITY_TOLERANCE_S: f64 = 0.5;
/// Largest gap in the query (seconds) bridged by [`merge_continuations`].
const MAX_CONTINUATION_GAP_S: f64 = 1.0;

/// A hit reduced to what the per-track search needs.
#[derive(Clone, Copy, Debug)]
struct Point {
    log_factor: f64,
    // The rest are f32 (what they are computed in), widened where they are used: a point
    // of 32 bytes rather than 48 is a third less to write and read per hit.
    pitch_bins: f32,
    q: f32,
    r: f32,
    q_span: f32,
    r_span: f32,
}

const _: () = assert!(std::mem::size_of::<Point>() == 32);

impl Point {
    fn pitch_bins(&self) -> f64 {
        f64::from(self.pitch_bins)
    }

    fn q(&self) -> f64 {
        f64::from(self.q)
    }

    fn r(&self) -> f64 {
        f64::from(self.r)
    }

    fn q_span(&self) -> f64 {
        f64::from(self.q_span)
    }

    fn r_span(&self) -> f64 {
        f64::from(self.r_span)
    }
}

/// Buffers that one worker reuses from track to track: a track's hits and what is made of
/// them are sized by its hits, and fresh vectors for each of them cost as much again in
/// allocation and page faults.
#[derive(Default)]
struct Scratch {
    hits: Vec<Hit>,
    /// Working space of the radix sort of `hits`.
    sorting: Vec<Hit>,
    quads: Vec<QueryQuad>,
    points: Vec<Point>,
    order: Vec<(u64, u32)>,
    keys: Vec<u64>,
    /// Working space of the radix sort of `keys`.
    keys_sorting: Vec<u64>,
    claimed: Vec<bool>,
}

fn match_track(
    hits: &[Hit],
    query: &[QueryQuad],
    p: &MatchParams,
    query_frames: f64,
    n_tracks_hit: usize,
    scratch: &mut Scratch,
) -> Vec<SampleMatch> {
    let track = hits[0].track;
    // The query quads the hits name, gathered first in a loop of plain loads: they sit at
    // scattered places of the query's quads (a cache miss each), and a loop with nothing
    // else in it lets the processor wait for many of them at once.
    let mut quads = std::mem::take(&mut scratch.quads);
    quads.clear();
    quads.extend(hits.iter().map(|h| query[h.query as usize]));
    let mut points = std::mem::take(&mut scratch.points);
    points.clear();
    points.extend(hits.iter().zip(&quads).map(|(h, q)| {
        let r_span = h.r_span_frames();
        Point {
            log_factor: ((q.span / r_span) as f64).ln(),
            pitch_bins: q.bin - h.r_bin_bins(),
            q: q.time,
            r: h.r_time_frames(),
            q_span: q.span,
            r_span,
        }
    }));
    let grid = Grid::new(p);
    // Vote in (log time factor, pitch, reference-time block). A sample, looped or not,
    // comes from one region of its reference, while chance hits spread over the whole
    // reference: the third axis lifts real groups far above the background. Only cells
    // holding two or more hits can seed a candidate, which keeps the work proportional to
    // the hits rather than to the size of the grid.
    // Points ordered by cell key: a transform's hits over every reference block then sit
    // in a few contiguous runs, one per (time factor, pitch) cell. With intercept seeds,
    // only the points near a seed's transform are ever read from it (`transform_runs`),
    // so only they are sorted: most of a track's hits are chance far from every seed.
    let mut order = std::mem::take(&mut scratch.order);
    let cells: Vec<(u32, u64)> = if p.seed_intercept_frames > 0.0 {
        let mut cells = intercept_seeds(
            &points,
            &grid,
            p,
            &mut scratch.keys,
            &mut scratch.keys_sorting,
        );
        truncate_cells(&mut cells, p, Some(&grid));
        grid.sort_into_cells(&points, grid.near_cells(&cells).as_deref(), p, &mut order);
        cells
    } else {
        grid.sort_into_cells(&points, None, p, &mut order);
        let cell_counts: Vec<(u64, u32)> = order
            .chunk_by(|a, b| a.0 == b.0)
            .map(|k| (k[0].0, k.len() as u32))
            .collect();
        let mut cells = neighbourhood_sums(&cell_counts, 1 << (2 * AXIS_BITS), 1 << AXIS_BITS)
            .filter(|&(sum, _)| sum as usize >= p.min_match_hits)
            .collect();
        truncate_cells(&mut cells, p, None);
        cells
    };
    let n_cells = (grid.n_lf * grid.n_pitch) as f64;
    let mut claimed = std::mem::take(&mut scratch.claimed);
    claimed.clear();
    claimed.resize(points.len(), false);
    let mut out = Vec::new();
    // Made for the first group found: most tracks have none.
    let mut by_block: Option<ByBlock> = None;
    // The places a chance group could have formed: every candidate track, every cell of
    // the transform grid, every offset of the query.
    let trials = n_tracks_hit as f64 * n_cells * (query_frames / CLUSTER_SCALE_FRAMES);
    let weak_params = cells
        .iter()
        .any(|c| c.0 & WEAK_FLAG != 0)
        .then(|| MatchParams {
            min_occurrence_hits: WEAK_OCCURRENCE_HITS,
            min_match_hits: WEAK_MATCH_HITS,
            ..p.clone()
        });
    for (sum, key) in cells {
        let weak_seed = sum & WEAK_FLAG != 0;
        let p = match &weak_params {
            Some(weak) if weak_seed => weak,
            _ => p,
        };
        let (lf_c, pitch_c, seed_block) = grid.centre(key);
        // The seed cell's transform, over the whole reference: a long sample reaches
        // beyond the block that seeded it. A weak seed's, only around its block: over a
        // whole song, chance hits of any one transform add up to a line that stands on
        // them, and most of the weak cells' cost is the hits far from their seeds.
        let blocks = if weak_seed {
            grid.blocks_around(seed_block, p)
        } else {
            (0, AXIS_MASK)
        };
        let mut window: Vec<usize> = grid
            .transform_runs(key, &order, blocks)
            .flat_map(|run| run.iter().map(|&(_, i)| i as usize))
            .filter(|&i| {
                !claimed[i]
                    && (points[i].log_factor - lf_c).abs() <= 1.5 * p.log_factor_cell
                    && (points[i].pitch_bins() - pitch_c).abs() <= 1.5 * p.pitch_cell_bins
            })
            .collect();
        window.sort_unstable();
        if window.len() < p.min_match_hits {
            continue;
        }
        let Some(group) = fit_group(&points, &window, p) else {
            continue;
        };
        // Evidence is the number of distinct reference quads matched: when the query repeats
        // itself (a drum loop, a chorus), the same few reference quads are hit once per
        // repetition, and counting them again would mistake repetition for agreement.
        let n_hits = group.distinct_reference_hits(&points);
        if n_hits < p.min_match_hits || group.reference_extent(&points) < p.min_ref_extent_frames {
            continue;
        }
        // Chance rate: the window's other hits spread uniformly over the intercepts they
        // span. The group's own hits are not chance: counted in, a loop's repetitions
        // raised the rate with every repetition while its evidence (distinct reference
        // quads) stayed put, so a clean 1.9 s drum loop played 2, 3 and 4 times scored
        // significance 30, 11 and 2, and 6 times not at all (BENCHMARKS.md, session 12).
        // At least one hit is left to chance, so a window holding only the group is not
        // taken for a certainty.
        // A weak seed's window starts where its reach does, not at the reference's start.
        let r_from = if weak_seed {
            window
                .iter()
                .map(|&i| points[i].r())
                .fold(f64::INFINITY, f64::min)
        } else {
            0.0
        };
        let b_extent = query_frames + group.slope * (grid.max_r(&points, &window) - r_from) + 1.0;
        let own: usize = group.clusters.iter().map(Vec::len).sum();
        let rate = window.len().saturating_sub(own).max(1) as f64 / b_extent.max(1.0);
        let occupied = group.clusters.len() as f64 * (2.0 * p.inlier_frames + 1.0);
        let sig = significance(n_hits, rate * occupied, trials);
        if sig < p.min_significance {
            continue;
        }
        for c in &group.clusters {
            for &i in c {
                claimed[i] = true;
            }
        }
        // Won-back hits only place the boundaries: they passed a looser test than the chance
        // model assumes, so they must not add to the evidence.
        let by_block = by_block.get_or_insert_with(|| ByBlock::new(&points, &grid));
        let extended =
            extend_along_lines(&points, by_block, group.slope, group.clusters.clone(), p);
        let group = Group {
            clusters: extended,
            ..group
        };
        out.push(group.into_match(track, &points, p, sig, n_hits, weak_seed));
    }
    (
        scratch.quads,
        scratch.points,
        scratch.order,
        scratch.claimed,
    ) = (quads, points, order, claimed);
    out
}

/// Keeps the `max_cells_per_track` strongest cells of at least `seed_min_hits`,
/// strongest first (ties by key); with a `grid` and weak candidates on, then up to
/// `weak_cells_per_track` of the others on a sampler's line, strongest first. The weak
/// cells carry the `WEAK_FLAG` bit in their sum.
fn truncate_cells(cells: &mut Vec<(u32, u64)>, p: &MatchParams, grid: Option<&Grid>) {
    cells.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let Some(grid) = grid.filter(|_| p.weak_cells_per_track > 0) else {
        cells.truncate(p.max_cells_per_track);
        return;
    };
    // The seeds of the usual strength come first, as without weak candidates.
    let n_strong = cells
        .iter()
        .take_while(|c| c.0 as usize >= p.seed_min_hits)
        .count()
        .min(p.max_cells_per_track);
    let mut n = n_strong;
    for i in n_strong..cells.len() {
        if n - n_strong >= p.weak_cells_per_track {
            break;
        }
        let (lf, pitch, _) = grid.centre(cells[i].1);
        if on_sampler_line(lf, pitch, p) {
            cells[n] = (cells[i].0 | WEAK_FLAG, cells[i].1);
            n += 1;
        }
    }
    cells.truncate(n);
}

/// Hits a weak candidate's seed needs (see [`MatchParams::weak_cells_per_track`]).
pub const WEAK_SEED_HITS: usize = 2;
/// Hits a weak candidate's occurrence needs.
pub const WEAK_OCCURRENCE_HITS: usize = 2;
/// Hits a weak candidate needs over all its occurrences.
pub const WEAK_MATCH_HITS: usize = 3;
/// Marks a weak cell's sum in [`truncate_cells`]' output.
const WEAK_FLAG: u32 = 1 << 31;

/// Whether a vote cell centred at log time factor `lf` (query over reference) and pitch
/// `pitch` (bins) lies, within a cell or so, on one of the three lines of transforms
/// that samplers use: a change of speed (pitch follows tempo), tempo alone, pitch alone.
fn on_sampler_line(lf: f64, pitch: f64, p: &MatchParams) -> bool {
    let bins_per_lf = 12.0 * p.bins_per_semitone / std::f64::consts::LN_2;
    let pitch_tol = 1.5 * p.pitch_cell_bins;
    let speed =
        (pitch + lf * bins_per_lf).abs() <= pitch_tol + 0.5 * p.log_factor_cell * bins_per_lf;
    let tempo_only = pitch.abs() <= pitch_tol;
    let pitch_only = lf.abs() <= 1.5 * p.log_factor_cell;
    speed || tempo_only || pitch_only
}

/// For every cell holding two or more hits, the hits in its 3x3x3 neighbourhood, with
/// the cell's key; `cell_counts` is sorted by key. The three reference blocks of one
/// (time factor, pitch) neighbour are consecutive keys (the margins keep the block axis
/// from carrying into the others), and as the cell's key grows so does each neighbour's,
/// so nine cursors walk the list once: linear, where a search per neighbour cost 27
/// binary searches a cell (15% of a 3-minute identify).
fn neighbourhood_sums(
    cell_counts: &[(u64, u32)],
    unit_lf: u64,
    unit_pitch: u64,
) -> impl Iterator<Item = (u32, u64)> + '_ {
    let mut cursors = [0usize; 9];
    cell_counts
        .iter()
        .filter(|c| c.1 >= 2)
        .map(move |&(key, _)| {
            let mut sum = 0u32;
            for (n, cursor) in cursors.iter_mut().enumerate() {
                let (di, dj) = ((n / 3) as u64, (n % 3) as u64);
                // Keys of blocks k-1..=k+1 at lf index i+di-1 and pitch index j+dj-1.
                let lo = key + di * unit_lf + dj * unit_pitch - unit_lf - unit_pitch - 1;
                let hi = lo + 2;
                while *cursor < cell_counts.len() && cell_counts[*cursor].0 < lo {
                    *cursor += 1;
                }
                sum += cell_counts[*cursor..]
                    .iter()
                    .take_while(|c| c.0 <= hi)
                    .map(|c| c.1)
                    .sum::<u32>();
            }
            (sum, key)
        })
}

/// Seeds from a finer vote that also asks the hits to agree on where the reference block
/// sits in the query: (log time factor, pitch, reference block, the query time of the
/// block's centre in cells of `seed_intercept_frames`). Chance hits that share a transform
/// and a block seldom also share that time, a sample's hits do. Returns, per (time factor,
/// pitch) cell, its best neighbourhood sum with a key of the coarse grid (the block part
/// is not used downstream: a seed stands for its transform over the whole reference).
fn intercept_seeds(
    points: &[Point],
    grid: &Grid,
    p: &MatchParams,
    keys: &mut Vec<u64>,
    sorting: &mut Vec<u64>,
) -> Vec<(u32, u64)> {
    const LF_SHIFT: u32 = 56;
    const PITCH_SHIFT: u32 = 48;
    const BLOCK_SHIFT: u32 = 24;
    const FIELD_MASK: u64 = (1 << 24) - 1;
    // One spare cell of margin either side, as in `Grid::key`.
    const MAX_FIELD: u64 = FIELD_MASK - 2;
    let block = p.seed_block_frames;
    let margin = block * p.max_time_factor;
    // The time factor at the centre of each factor cell.
    let factors: Vec<f64> = (0..254)
        .map(|i| (grid.lf_min + (i as f64 + 0.5) * grid.lf_cell).exp())
        .collect();
    keys.clear();
    keys.extend(points.iter().map(|pt| {
        let (i, j) = grid.transform_index(pt);
        // Eight bits an axis (the default grid has 50 x 76 cells; a finer one shares
        // its last cells).
        let (i, j) = (i.min(253), j.min(253));
        let k = ((pt.r().max(0.0) / block) as u64).min(MAX_FIELD);
        let a = factors[i as usize];
        let centre = (k as f64 + 0.5) * block;
        let b = pt.q() - a * (pt.r() - centre) + margin;
        let m = ((b.max(0.0) / p.seed_intercept_frames) as u64).min(MAX_FIELD);
        ((i + 1) << LF_SHIFT) | ((j + 1) << PITCH_SHIFT) | ((k + 1) << BLOCK_SHIFT) | (m + 1)
    }));
    radix::sort_by_key(keys, sorting, |&k| k);
    let counts: Vec<(u64, u32)> = keys
        .chunk_by(|a, b| a == b)
        .map(|c| (c[0], c.len() as u32))
        .collect();
    let mut best: Vec<(u32, u64)> = neighbourhood_sums(&counts, 1 << LF_SHIFT, 1 << PITCH_SHIFT)
        .filter(|&(sum, _)| {
            sum as usize >= p.seed_min_hits
                || (p.weak_cells_per_track > 0 && sum as usize >= WEAK_SEED_HITS)
        })
        .map(|(sum, key)| {
            let i = key >> LF_SHIFT;
            let j = (key >> PITCH_SHIFT) & 0xff;
            // The block only breaks ties between seeds from here on.
            let k = ((key >> BLOCK_SHIFT) & FIELD_MASK).min(AXIS_MASK);
            (sum, (i << (2 * AXIS_BITS)) | (j << AXIS_BITS) | k)
        })
        .collect();
    // One seed per transform: the strongest.
    best.sort_unstable_by(|a, b| {
        (a.1 >> AXIS_BITS)
            .cmp(&(b.1 >> AXIS_BITS))
            .then(b.0.cmp(&a.0))
    });
    best.dedup_by_key(|c| c.1 >> AXIS_BITS);
    best
}

/// Reference frames at which chance groups are counted as separate trials.
const CLUSTER_SCALE_FRAMES: f64 = 8.0;

/// The (log time factor, pitch, reference block) histogram geometry.
#[derive(Clone, Copy)]
struct Grid {
    lf_min: f64,
    lf_cell: f64,
    n_lf: usize,
    pitch_min: f64,
    pitch_cell: f64,
    n_pitch: usize,
}

/// Largest (time factor x pitch) grid whose cells near the seeds are tabulated (the
/// default has 50 x 76).
const MAX_NEAR_TABLE: usize = 1 << 22;

/// Bits of a cell key given to each axis.
const AXIS_BITS: u32 = 21;
const AXIS_MASK: u64 = (1 << AXIS_BITS) - 1;

impl Grid {
    fn new(p: &MatchParams) -> Self {
        let lf_max = p.max_time_factor.ln();
        let pitch_max = p.max_pitch_semitones * p.bins_per_semitone;
        Self {
            lf_min: -lf_max,
            lf_cell: p.log_factor_cell,
            n_lf: (2.0 * lf_max / p.log_factor_cell).ceil() as usize + 1,
            pitch_min: -pitch_max,
            pitch_cell: p.pitch_cell_bins,
            n_pitch: (2.0 * pitch_max / p.pitch_cell_bins).ceil() as usize + 1,
        }
    }

    /// The (log time factor, pitch) cell indices of a point.
    fn transform_index(&self, pt: &Point) -> (u64, u64) {
        let i = (((pt.log_factor - self.lf_min) / self.lf_cell) as u64).min(self.n_lf as u64 - 1);
        (i, self.pitch_index(pt.pitch_bins()) as u64)
    }

    /// The pitch cell of `pitch_bins`, clamped to the grid.
    fn pitch_index(&self, pitch_bins: f64) -> usize {
        (((pitch_bins - self.pitch_min) / self.pitch_cell) as usize).min(self.n_pitch - 1)
    }

    /// The cell of a point, packed as (lf index, pitch index, reference block) with one
    /// spare cell of margin on each axis so that neighbours never underflow.
    fn key(&self, pt: &Point, p: &MatchParams) -> u64 {
        let (i, j) = self.transform_index(pt);
        let k = ((pt.r().max(0.0) / p.ref_block_frames) as u64).min(AXIS_MASK - 2);
        ((i + 1) << (2 * AXIS_BITS)) | ((j + 1) << AXIS_BITS) | (k + 1)
    }

    fn centre(&self, key: u64) -> (f64, f64, u64) {
        let i = (key >> (2 * AXIS_BITS)) - 1;
        let j = ((key >> AXIS_BITS) & AXIS_MASK) - 1;
        let k = (key & AXIS_MASK) - 1;
        (
            self.lf_min + (i as f64 + 0.5) * self.lf_cell,
            self.pitch_min + (j as f64 + 0.5) * self.pitch_cell,
            k,
        )
    }

    /// Fills `order` with the cell key and index of each point (of those whose cell `near`
    /// marks, if given), sorted.
    fn sort_into_cells(
        &self,
        points: &[Point],
        near: Option<&[bool]>,
        p: &MatchParams,
        order: &mut Vec<(u64, u32)>,
    ) {
        order.clear();
        order.extend(
            points
                .iter()
                .enumerate()
                .filter(|(_, pt)| near.is_none_or(|near| near[self.cell_index(pt)]))
                .map(|(i, pt)| (self.key(pt, p), i as u32)),
        );
        order.sort_unstable();
    }

    /// Position of a point's (time factor, pitch) cell in a `n_lf` x `n_pitch` table.
    fn cell_index(&self, pt: &Point) -> usize {
        let (i, j) = self.transform_index(pt);
        i as usize * self.n_pitch + j as usize
    }

    /// Which (time factor, pitch) cells lie within two cells of a seed's (the cells
    /// [`Self::transform_runs`] reads), by [`Self::cell_index`]; `None` (all of them) for
    /// a grid too fine to tabulate.
    fn near_cells(&self, seeds: &[(u32, u64)]) -> Option<Vec<bool>> {
        let n = self.n_lf.checked_mul(self.n_pitch)?;
        if n > MAX_NEAR_TABLE {
            return None;
        }
        let mut near = vec![false; n];
        for &(_, key) in seeds {
            // Key fields are indices plus one, as in `Grid::key`.
            let i = (key >> (2 * AXIS_BITS)) as i64 - 1;
            let j = ((key >> AXIS_BITS) & AXIS_MASK) as i64 - 1;
            for a in (i - 2).max(0)..=(i + 2).min(self.n_lf as i64 - 1) {
                for b in (j - 2).max(0)..=(j + 2).min(self.n_pitch as i64 - 1) {
                    near[a as usize * self.n_pitch + b as usize] = true;
                }
            }
        }
        Some(near)
    }

    /// The reference blocks, as key fields (index plus one, see [`Self::key`]), within
    /// [`MatchParams::weak_reach_frames`] of the seed block `seed_block` (an index in
    /// `seed_block_frames`, as [`Self::centre`] gives it for an intercept seed's key).
    /// The range is inclusive: (first, last).
    fn blocks_around(&self, seed_block: u64, p: &MatchParams) -> (u64, u64) {
        let start = seed_block as f64 * p.seed_block_frames;
        let field =
            |frames: f64| ((frames.max(0.0) / p.ref_block_frames) as u64 + 1).min(AXIS_MASK);
        (
            field(start - p.weak_reach_frames),
            field(start + p.seed_block_frames + p.weak_reach_frames),
        )
    }

    /// The runs of `order` (sorted by key) whose (time factor, pitch) cell is within two
    /// cells of `key`'s, over the reference blocks `first..=last` (key fields, see
    /// [`Self::key`]): a superset of the window around it.
    fn transform_runs<'a>(
        &self,
        key: u64,
        order: &'a [(u64, u32)],
        (first, last): (u64, u64),
    ) -> impl Iterator<Item = &'a [(u64, u32)]> + 'a {
        let i = (key >> (2 * AXIS_BITS)) as i64;
        let j = ((key >> AXIS_BITS) & AXIS_MASK) as i64;
        (-2..=2i64).flat_map(move |di| {
            (-2..=2i64).filter_map(move |dj| {
                let (a, b) = (i + di, j + dj);
                if a < 0 || b < 0 || b as u64 > AXIS_MASK {
                    return None;
                }
                let base = ((a as u64) << (2 * AXIS_BITS)) | ((b as u64) << AXIS_BITS);
                let lo = order.partition_point(|&(k, _)| k < base | first);
                let hi = order.partition_point(|&(k, _)| k <= base | last);
                (hi > lo).then(|| &order[lo..hi])
            })
        })
    }

    fn max_r(&self, points: &[Point], window: &[usize]) -> f64 {
        window.iter().map(|&i| points[i].r()).fold(0.0, f64::max)
    }
}

/// Hits of one transform, split into occurrences that share one slope.
struct Group {
    slope: f64,
    intercepts: Vec<f64>,
    clusters: Vec<Vec<usize>>,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    *m
}

/// Clusters `window` by intercept and fits the common slope and per-cluster intercepts.
fn fit_group(points: &[Point], window: &[usize], p: &MatchParams) -> Option<Group> {
    let mut lfs: Vec<f64> = window.iter().map(|&i| points[i].log_factor).collect();
    let slope0 = median(&mut lfs).exp();
    let clusters = cluster_by_intercept(points, window, slope0, p.cluster_gap_frames)
        .into_iter()
        .filter(|c| c.len() >= p.min_occurrence_hits)
        .collect::<Vec<_>>();
    if clusters.is_empty() {
        return None;
    }
    let mut slope = pooled_slope(points, &clusters, p.slope_run_gap_frames).unwrap_or(slope0);
    // The first slope came from noisy per-hit span ratios, so one long occurrence may have
    // drifted into several clusters; cluster again at the fitted slope.
    let mut clusters = clusters;
    for _ in 0..2 {
        let again: Vec<Vec<usize>> =
            cluster_by_intercept(points, window, slope, p.cluster_gap_frames)
                .into_iter()
                .filter(|c| c.len() >= p.min_occurrence_hits)
                .collect();
        if again.is_empty() {
            break;
        }
        clusters = again;
        slope = pooled_slope(points, &clusters, p.slope_run_gap_frames).unwrap_or(slope);
    }
    // One intercept per cluster, then re-collect inliers of each line from the window, so
    // hits that the first, rougher clustering split off are won back.
    let mut intercepts: Vec<f64> = clusters
        .iter()
        .map(|c| {
            let mut bs: Vec<f64> = c
                .iter()
                .map(|&i| points[i].q() - slope * points[i].r())
                .collect();
            median(&mut bs)
        })
        .collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); intercepts.len()];
    for &i in window {
        let b = points[i].q() - slope * points[i].r();
        let best = intercepts
            .iter()
            .enumerate()
            .map(|(k, &bk)| (k, (b - bk).abs()))
            .min_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((k, d)) = best
            && d <= p.inlier_frames
        {
            members[k].push(i);
        }
    }
    let mut kept: Vec<(f64, Vec<usize>)> = intercepts
        .drain(..)
        .zip(members)
        .filter(|(_, m)| m.len() >= p.min_occurrence_hits)
        .collect();
    if kept.is_empty() {
        return None;
    }
    // A last refit of the slope on the final inliers.
    let clusters: Vec<Vec<usize>> = kept.iter().map(|(_, m)| m.clone()).collect();
    let slope = pooled_slope(points, &clusters, p.slope_run_gap_frames).unwrap_or(slope);
    for (b, m) in &mut kept {
        let mut bs: Vec<f64> = m
            .iter()
            .map(|&i| points[i].q() - slope * points[i].r())
            .collect();
        *b = median(&mut bs);
    }
    let kept = keep_coherent(points, suppress_overlaps(points, kept), p);
    if kept.is_empty() {
        return None;
    }
    let (intercepts, clusters) = kept.into_iter().unzip();
    Some(Group {
        slope,
        intercepts,
        clusters,
    })
}

/// Keeps, among clusters that overlap in the query, only the strongest. Repetitions of a
/// loop occupy separate stretches of the query; parallel lines over one stretch are echoes
/// (the reference repeats its own bars, so one excerpt also matches its neighbours) and
/// are not extra occurrences, nor extra evidence.
fn suppress_overlaps(points: &[Point], mut kept: Vec<(f64, Vec<usize>)>) -> Vec<(f64, Vec<usize>)> {
    let span = |c: &[usize]| {
        c.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &i| {
            (
                lo.min(points[i].q()),
                hi.max(points[i].q() + points[i].q_span()),
            )
        })
    };
    kept.sort_by_key(|k| std::cmp::Reverse(k.1.len()));
    let mut out: Vec<(f64, Vec<usize>)> = Vec::with_capacity(kept.len());
    let mut spans: Vec<(f64, f64)> = Vec::with_capacity(kept.len());
    for (b, c) in kept {
        let (lo, hi) = span(&c);
        let overlaps = spans.iter().any(|&(l, h)| {
            let inter = hi.min(h) - lo.max(l);
            inter > 0.5 * (hi - lo).min(h - l)
        });
        if !overlaps {
            spans.push((lo, hi));
            out.push((b, c));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Wins back hits that lie on a fitted line but missed the voting window: a single quad's
/// span ratio is a noisy tempo estimate, so near the edges of a sample some true hits fall
/// outside the window, and the occurrence would start late. Once the line is known, a hit
/// is accepted with a looser tempo test if it sits on the line, at the group's pitch, within
/// a few seconds of the cluster's reference span.
fn extend_along_lines(
    points: &[Point],
    by_block: &ByBlock,
    slope: f64,
    mut clusters: Vec<Vec<usize>>,
    p: &MatchParams,
) -> Vec<Vec<usize>> {
    let mut pitches: Vec<f64> = clusters
        .iter()
        .flat_map(|c| c.iter().map(|&i| points[i].pitch_bins()))
        .collect();
    let pitch = median(&mut pitches);
    let log_slope = slope.ln();
    let mut member: Vec<usize> = clusters.iter().flatten().copied().collect();
    member.sort_unstable();
    let pitch_tol = 1.5 * p.pitch_cell_bins;
    let mut won = Vec::new();
    for c in &mut clusters {
        let (b, lo, hi) = extension_of(points, c, slope);
        won.clear();
        won.extend(
            by_block
                .between(lo, hi, pitch - pitch_tol, pitch + pitch_tol)
                .filter(|&i| {
                    let pt = &points[i];
                    pt.r() >= lo
                        && pt.r() <= hi
                        && (pt.q() - slope * pt.r() - b).abs() <= p.inlier_frames
                        && (pt.pitch_bins() - pitch).abs() <= pitch_tol
                        && (pt.log_factor - log_slope).abs() <= EXTEND_LOG_FACTOR
                        && member.binary_search(&i).is_err()
                }),
        );
        // In the points' order, as a scan of all of them would add them.
        won.sort_unstable();
        c.extend_from_slice(&won);
        member.extend_from_slice(&won);
        member.sort_unstable();
    }
    clusters
}

/// The intercept of a cluster's line at `slope`, and the reference frames its hits are
/// won back over (see [`extend_along_lines`]).
fn extension_of(points: &[Point], cluster: &[usize], slope: f64) -> (f64, f64, f64) {
    let mut bs: Vec<f64> = cluster
        .iter()
        .map(|&i| points[i].q() - slope * points[i].r())
        .collect();
    let (lo, hi) = cluster.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &i| {
        (lo.min(points[i].r()), hi.max(points[i].r()))
    });
    (median(&mut bs), lo - EXTEND_FRAMES, hi + EXTEND_FRAMES)
}

/// A track's points by pitch cell and reference block (a counting sort; each cell's in
/// index order): [`extend_along_lines`] reads a few pitch bins at the group's pitch
/// around each cluster's stretch of the reference, which a scan of all the points made
/// cost a track's points per cluster (nearly half of a 10-minute query's match;
/// BENCHMARKS.md, session 24).
struct ByBlock {
    /// Reference frames per block: [`BY_BLOCK_FRAMES`], or more for a reference so long
    /// that its cells would outnumber its points.
    frames: f64,
    n_blocks: usize,
    /// The pitch cells: the vote grid's, at most [`BY_BLOCK_MAX_PITCH_CELLS`].
    grid: Grid,
    n_pitch: usize,
    /// Where each (pitch cell, block)'s points start in `points`, pitch-major; one more
    /// entry than cells.
    starts: Vec<u32>,
    points: Vec<u32>,
}

/// Reference frames per block of [`ByBlock`] (2 s).
const BY_BLOCK_FRAMES: f64 = 256.0;
/// Pitch cells of [`ByBlock`] at most (the default grid has 76).
const BY_BLOCK_MAX_PITCH_CELLS: usize = 1 << 16;

impl ByBlock {
    fn new(points: &[Point], grid: &Grid) -> Self {
        let n_pitch = grid.n_pitch.min(BY_BLOCK_MAX_PITCH_CELLS);
        let max_r = points.iter().map(Point::r).fold(0.0, f64::max);
        let max_blocks = (points.len() / n_pitch).max(64);
        let frames = BY_BLOCK_FRAMES.max(max_r / max_blocks as f64);
        let n_blocks = (max_r / frames) as usize + 1;
        let mut by = Self {
            frames,
            n_blocks,
            grid: *grid,
            n_pitch,
            starts: vec![0u32; n_pitch * n_blocks + 1],
            points: vec![0u32; points.len()],
        };
        let cells: Vec<usize> = points
            .iter()
            .map(|pt| by.pitch_index(pt.pitch_bins()) * n_blocks + by.block(pt.r()))
            .collect();
        for &c in &cells {
            by.starts[c + 1] += 1;
        }
        for k in 1..by.starts.len() {
            by.starts[k] += by.starts[k - 1];
        }
        let mut next = by.starts.clone();
        for (i, &c) in cells.iter().enumerate() {
            by.points[next[c] as usize] = i as u32;
            next[c] += 1;
        }
        by
    }

    fn block(&self, r: f64) -> usize {
        ((r.max(0.0) / self.frames) as usize).min(self.n_blocks - 1)
    }

    fn pitch_index(&self, pitch_bins: f64) -> usize {
        self.grid.pitch_index(pitch_bins).min(self.n_pitch - 1)
    }

    /// The points of the cells that reference frames `lo..=hi` and pitches
    /// `pitch_lo..=pitch_hi` (bins) touch: a superset of those in them.
    fn between(
        &self,
        lo: f64,
        hi: f64,
        pitch_lo: f64,
        pitch_hi: f64,
    ) -> impl Iterator<Item = usize> + '_ {
        let (first, last) = (self.block(lo), self.block(hi));
        (self.pitch_index(pitch_lo)..=self.pitch_index(pitch_hi)).flat_map(move |j| {
            let a = self.starts[j * self.n_blocks + first] as usize;
            let b = self.starts[j * self.n_blocks + last + 1] as usize;
            self.points[a..b].iter().map(|&i| i as usize)
        })
    }
}

/// How far beyond a cluster's reference span (frames, 3 s) the line is searched.
const EXTEND_FRAMES: f64 = 375.0;
/// Tempo tolerance (natural log) of a won-back hit: about three times the window's.
const EXTEND_LOG_FACTOR: f64 = 0.12;

/// Keeps the clusters that belong to one sampling: those that reuse the reference segment
/// of the strongest cluster (the repetitions of a loop), and those strong enough to stand
/// as samples on their own (chops from elsewhere in the same reference). Weak clusters
/// scattered over the whole reference are what chance produces when a long query meets a
/// long reference at a common transform, and summing them would fake evidence.
fn keep_coherent(
    points: &[Point],
    kept: Vec<(f64, Vec<usize>)>,
    p: &MatchParams,
) -> Vec<(f64, Vec<usize>)> {
    let ref_span = |c: &[usize]| {
        c.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &i| {
            (
                lo.min(points[i].r()),
                hi.max(points[i].r() + points[i].r_span()),
            )
        })
    };
    let Some(best) = kept.iter().max_by_key(|k| k.1.len()) else {
        return kept;
    };
    let (b_lo, b_hi) = ref_span(&best.1);
    let margin = p.ref_block_frames;
    kept.into_iter()
        .filter(|(_, c)| {
            let (lo, hi) = ref_span(c);
            let reuses_segment = lo < b_hi + margin && b_lo - margin < hi;
            let stands_alone = c.len() >= p.min_match_hits && hi - lo >= p.min_ref_extent_frames;
            reuses_segment || stands_alone
        })
        .collect()
}

/// Sorts the window's hits by intercept at `slope` and chains neighbours closer than
/// `gap` frames.
fn cluster_by_intercept(
    points: &[Point],
    window: &[usize],
    slope: f64,
    gap: f64,
) -> Vec<Vec<usize>> {
    let mut by_b: Vec<(f64, usize)> = window
        .iter()
        .map(|&i| (points[i].q() - slope * points[i].r(), i))
        .collect();
    by_b.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    let mut last_b = f64::NEG_INFINITY;
    for (b, i) in by_b {
        match clusters.last_mut() {
            Some(c) if b - last_b <= gap => c.push(i),
            _ => clusters.push(vec![i]),
        }
        last_b = b;
    }
    clusters
}

/// The least-squares slope of q on r shared by all clusters, each with its own intercept.
/// None when the clusters span too little reference time to tell.
///
/// A cluster is fitted as its runs of hits that follow each other within `run_gap`
/// frames in the reference, each run with its own intercept. Clustering goes by intercept
/// alone, so two chance hits 30 s apart whose intercepts happen to agree form one cluster;
/// in a least-squares fit a pair's weight grows with the square of its distance, and such
/// a pair can outweigh a real sample's dozen hits (`MatchParams::slope_run_gap_frames`).
fn pooled_slope(points: &[Point], clusters: &[Vec<usize>], run_gap: f64) -> Option<f64> {
    let (mut sxy, mut sxx) = (0.0, 0.0);
    let mut add_run = |run: &[usize]| {
        let n = run.len() as f64;
        let rm = run.iter().map(|&i| points[i].r()).sum::<f64>() / n;
        let qm = run.iter().map(|&i| points[i].q()).sum::<f64>() / n;
        for &i in run {
            let dr = points[i].r() - rm;
            sxy += dr * (points[i].q() - qm);
            sxx += dr * dr;
        }
    };
    let mut sorted: Vec<usize> = Vec::new();
    for c in clusters {
        // Unsplit (the default), the cluster is summed as it is, without a copy.
        if !run_gap.is_finite() {
            add_run(c);
            continue;
        }
        sorted.clear();
        sorted.extend_from_slice(c);
        sorted.sort_by(|&x, &y| points[x].r().total_cmp(&points[y].r()));
        for run in sorted.chunk_by(|&x, &y| points[y].r() - points[x].r() <= run_gap) {
            add_run(run);
        }
    }
    // Below about a second of reference spread (125 frames) the span ratios are the
    // better estimate.
    (sxx > MIN_SLOPE_SPREAD_FRAMES2)
        .then(|| sxy / sxx)
        .filter(|s| *s > 0.0)
}

/// Sum of squared reference-time deviations below which a fitted slope is not trusted.
const MIN_SLOPE_SPREAD_FRAMES2: f64 = 125.0 * 125.0;

impl Group {
    /// Reference frames between the first and the last matched anchor.
    fn reference_extent(&self, points: &[Point]) -> f64 {
        let rs = self.clusters.iter().flatten().map(|&i| points[i].r());
        let (lo, hi) = rs.fold((f64::INFINITY, 0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
        (hi - lo).max(0.0)
    }

    fn distinct_reference_hits(&self, points: &[Point]) -> usize {
        let mut keys: Vec<(u64, u64)> = self
            .clusters
            .iter()
            .flatten()
            .map(|&i| {
                let pt = &points[i];
                (pt.r().to_bits(), pt.r_span().to_bits())
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    fn into_match(
        self,
        track: u32,
        points: &[Point],
        p: &MatchParams,
        sig: f64,
        hits: usize,
        weak_seed: bool,
    ) -> SampleMatch {
        let occurrences: Vec<Occurrence> = self
            .clusters
            .iter()
            .zip(&self.intercepts)
            .map(|(c, &b)| {
                let r0 = c
                    .iter()
                    .map(|&i| points[i].r())
                    .fold(f64::INFINITY, f64::min);
                let r1 = c
                    .iter()
                    .map(|&i| points[i].r() + points[i].r_span())
                    .fold(0.0, f64::max);
                Occurrence {
                    query_start_s: (self.slope * r0 + b).max(0.0) * p.frame_s,
                    query_end_s: (self.slope * r1 + b).max(0.0) * p.frame_s,
                    ref_start_s: r0 * p.frame_s,
                    ref_end_s: r1 * p.frame_s,
                    hits: c.len(),
                }
            })
            .collect();
        let occurrences = drop_weak_echoes(merge_continuations(
            occurrences,
            1.0 / self.slope,
            MAX_CONTINUATION_GAP_S,
        ));
        let mut pitches: Vec<f64> = self
            .clusters
            .iter()
            .flatten()
            .map(|&i| points[i].pitch_bins())
            .collect();
        SampleMatch {
            track,
            tempo: 1.0 / self.slope,
            pitch_semitones: median(&mut pitches) / p.bins_per_semitone,
            occurrences,
            hits,
            significance: sig,
            verification: 0.0,
            verified: false,
            weak_seed,
        }
    }
}

#[cfg(test)]
mod tests;
