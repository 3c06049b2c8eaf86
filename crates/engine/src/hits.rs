//! A query's hits within a memory budget.
//!
//! Hits are most of what identify holds in memory (16 bytes each), and their number grows
//! with the query's length times the library's size: a 3-minute song makes about 0.5M
//! hits per hour of references, so an hour-long upload against a 100-hour library would
//! want gigabytes. Every reference is matched on its own hits, so a query whose hits do not
//! fit is matched in passes, each over a range of reference ids whose hits do fit. The
//! first lookup collects hits until the budget runs out and then only counts them per
//! reference; the counts plan the passes and give the matcher what it otherwise counts
//! over all hits at once ([`matcher::PassScope`]), so the result is the one a single pass
//! would give. A pass costs one more lookup of the whole query.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeInclusive;

use index::TrackId;
use matcher::{Hit, MatchParams, PassScope, QueryQuad};

/// Hits per reference, counted once a lookup's hits outgrow their budget.
pub(crate) type TrackCounts = HashMap<TrackId, usize, BuildHasherDefault<TrackIdHasher>>;

/// A multiplicative hash for track ids: the map is updated once per hit, where the
/// standard library's SipHash would cost more than the rest of a hit's handling.
#[derive(Default)]
pub(crate) struct TrackIdHasher(u64);

impl Hasher for TrackIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(GOLDEN);
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Where one lookup shard's hits go: kept while they fit in `limit`, counted after.
pub(crate) struct HitSink {
    hits: Vec<Hit>,
    limit: usize,
    counted: Option<Counted>,
}

/// Per-reference counts of plausible hits and the latest query time among them.
#[derive(Default)]
pub(crate) struct Counted {
    per_track: TrackCounts,
    latest_query_time: Option<f32>,
}

impl Counted {
    fn add(&mut self, hit: &Hit, query: &[QueryQuad], p: &MatchParams) {
        if !matcher::is_plausible(hit, query, p) {
            return;
        }
        *self.per_track.entry(hit.track).or_default() += 1;
        let time = query[hit.query as usize].time;
        self.latest_query_time = Some(self.latest_query_time.map_or(time, |t| t.max(time)));
    }

    fn merge(&mut self, other: Counted) {
        for (track, n) in other.per_track {
            *self.per_track.entry(track).or_default() += n;
        }
        self.latest_query_time = match (self.latest_query_time, other.latest_query_time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

impl HitSink {
    /// A sink that keeps at most `limit` hits, reserving `expected` (at most `limit`).
    pub(crate) fn new(limit: usize, expected: usize) -> Self {
        Self {
            hits: Vec::with_capacity(expected.min(limit)),
            limit,
            counted: None,
        }
    }

    /// Takes one admitted hit.
    #[inline]
    pub(crate) fn push(&mut self, hit: Hit, query: &[QueryQuad], p: &MatchParams) {
        if let Some(counted) = &mut self.counted {
            counted.add(&hit, query, p);
        } else if self.hits.len() < self.limit {
            self.hits.push(hit);
        } else {
            self.overflow(query, p);
            if let Some(counted) = &mut self.counted {
                counted.add(&hit, query, p);
            }
        }
    }

    /// Turns the kept hits into counts and frees them.
    fn overflow(&mut self, query: &[QueryQuad], p: &MatchParams) {
        let mut counted = Counted::default();
        for hit in &self.hits {
            counted.add(hit, query, p);
        }
        self.hits = Vec::new();
        self.counted = Some(counted);
    }
}

/// What a lookup into several sinks gave: every hit, or (when they outgrew the budget)
/// counts only.
pub(crate) enum Collected {
    /// The hits, one vector per lookup shard.
    All(Vec<Vec<Hit>>),
    /// The hits outgrew the budget; the passes that will hold them and the scope that
    /// their matching shares.
    Over {
        passes: Vec<RangeInclusive<TrackId>>,
        scope: PassScope,
    },
}

/// Ends a lookup into `sinks`: their hits if no sink overflowed, else passes of at most
/// `budget` hits each over `ids`.
pub(crate) fn collect(
    sinks: Vec<HitSink>,
    query: &[QueryQuad],
    p: &MatchParams,
    ids: &RangeInclusive<TrackId>,
    budget: usize,
) -> Collected {
    if sinks.iter().all(|s| s.counted.is_none()) {
        return Collected::All(sinks.into_iter().map(|s| s.hits).collect());
    }
    let mut total = Counted::default();
    for mut sink in sinks {
        if sink.counted.is_none() {
            sink.overflow(query, p);
        }
        if let Some(counted) = sink.counted {
            total.merge(counted);
        }
    }
    let scope = PassScope::from_counts(
        total.per_track.values().copied(),
        total.latest_query_time,
        p,
    );
    let mut counts: Vec<(TrackId, usize)> = total.per_track.into_iter().collect();
    counts.sort_unstable();
    Collected::Over {
        passes: plan_passes(&counts, ids, budget),
        scope,
    }
}

/// Splits `ids` into consecutive ranges whose hits (`counts`, sorted by track) add up to at
/// most `budget` each, as few as a greedy cut gives; a reference with more hits than the
/// budget has a range of its own. The ranges cover `ids` without gaps, in order.
pub(crate) fn plan_passes(
    counts: &[(TrackId, usize)],
    ids: &RangeInclusive<TrackId>,
    budget: usize,
) -> Vec<RangeInclusive<TrackId>> {
    let mut passes = Vec::new();
    let mut start = *ids.start();
    let mut held = 0usize;
    for &(track, n) in counts.iter().filter(|(t, _)| ids.contains(t)) {
        if held > 0 && held + n > budget {
            // `track` > `start` here: `held` counts tracks from `start` up to before it.
            passes.push(start..=track - 1);
            start = track;
            held = 0;
        }
        held += n;
    }
    passes.push(start..=*ids.end());
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_the_ids_in_budgeted_ranges() {
        let counts = [(2, 40), (3, 70), (7, 10), (9, 200), (12, 5), (20, 60)];
        let passes = plan_passes(&counts, &(0..=TrackId::MAX), 100);
        assert_eq!(
            passes,
            vec![0..=2, 3..=8, 9..=11, 12..=TrackId::MAX],
            "40 | 70+10 | 200 alone | 5+60"
        );
        // Contiguous and complete whatever the input.
        for budget in [1, 50, 100, 1000] {
            let passes = plan_passes(&counts, &(1..=30), budget);
            assert_eq!(*passes[0].start(), 1);
            assert_eq!(passes.last().map(|r| *r.end()), Some(30));
            for w in passes.windows(2) {
                assert_eq!(*w[0].end() + 1, *w[1].start());
            }
            for range in &passes {
                let held: usize = counts
                    .iter()
                    .filter(|(t, _)| range.contains(t))
                    .map(|&(_, n)| n)
                    .sum();
                let tracks = counts.iter().filter(|(t, _)| range.contains(t)).count();
                assert!(held <= budget || tracks == 1, "{range:?} holds {held}");
            }
        }
        assert_eq!(plan_passes(&[], &(5..=9), 10), vec![5..=9]);
    }
}
