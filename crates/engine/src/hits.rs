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
//! would give, on a store that does not change meanwhile (each lookup reads the store as
//! it is then; tracks added after the first are not searched). A pass costs one more
//! lookup of the whole query. The bound is on the hits kept (give or take a batch of
//! 1,024 a shard while a lookup runs): a reference with more hits than the bound alone
//! gets a pass of its own, and the vectors holding hits may reserve up to twice what they
//! hold.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};

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
        // The map picks buckets from the low bits: fold the product's well-mixed high
        // bits into them, so ids that differ only in high bits do not collide.
        let h = u64::from(id).wrapping_mul(GOLDEN);
        self.0 = h ^ (h >> 29);
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Where one lookup shard's hits go: kept while the lookup's hits, over all shards, fit
/// in their budget (`kept`, shared), counted after. Kept hits fill blocks of
/// [`HIT_BLOCK`]: a vector that doubled as it grew copied its hits at each doubling and
/// held up to twice what it needed, where a block once full stays put.
pub(crate) struct HitSink<'a> {
    /// The block being filled.
    hits: Vec<Hit>,
    /// Full blocks.
    full: Vec<Vec<Hit>>,
    /// Hits this sink may still keep before it asks the shared budget for more.
    reserved: usize,
    budget: Option<&'a Budget>,
    counted: Option<Counted>,
    /// Hits offered and admitted, not yet pushed: the first `n_offered`.
    offered: [Hit; OFFERED],
    n_offered: usize,
}

/// Hits a sink gathers from [`HitSink::offer`] before pushing them.
const OFFERED: usize = 64;

/// A lookup's budget of hits, shared by its sinks (which run on several threads): each
/// takes [`BUDGET_BATCH`] hits at a time from it. It holds a batch per sink beyond the
/// budget, so running out means more than the budget was kept whatever the threads'
/// timing, and [`collect`] decides the rest exactly: a lookup's hits fit if and only if
/// they number at most the budget.
pub(crate) struct Budget {
    left: AtomicUsize,
}

/// Hits a block of a [`HitSink`] holds (4 MB): the matcher takes blocks as they are, so
/// they must be large enough that a track's hits are a few runs of each, not many.
const HIT_BLOCK: usize = 1 << 18;

/// Hits a sink takes from the shared budget at a time: few enough that what the shards
/// hold unused (under a batch each) is a small part of any useful budget (16 shards: 16K
/// hits, 256 KB), so a lookup overflows only when its hits come that close to the budget.
const BUDGET_BATCH: usize = 1024;

impl Budget {
    /// The budget of `hits` for a lookup into `n_sinks` sinks.
    pub(crate) fn new(hits: usize, n_sinks: usize) -> Self {
        Self {
            left: AtomicUsize::new(hits.saturating_add(n_sinks.saturating_mul(BUDGET_BATCH))),
        }
    }

    /// Takes up to a batch; 0 when the budget is spent (and from then on for every sink).
    fn take(&self) -> usize {
        let mut left = self.left.load(Ordering::Relaxed);
        loop {
            if left == 0 {
                return 0;
            }
            let n = left.min(BUDGET_BATCH);
            match self.left.compare_exchange_weak(
                left,
                left - n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => left = now,
            }
        }
    }
}

/// Per-reference counts of plausible hits and the latest query time among them.
#[derive(Default)]
pub(crate) struct Counted {
    per_track: TrackCounts,
    latest_query_time: Option<f32>,
}

impl Counted {
    fn add(&mut self, hit: &Hit, plausible: &Plausible<'_>) {
        if !plausible.range.admits(hit, plausible.query) {
            return;
        }
        *self.per_track.entry(hit.track).or_default() += 1;
        let time = plausible.query[hit.query as usize].time;
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

impl<'a> HitSink<'a> {
    /// A sink that keeps hits while `budget` (if any) lasts, reserving room for
    /// `expected` of them to start with.
    pub(crate) fn new(budget: Option<&'a Budget>, expected: usize) -> Self {
        Self {
            hits: Vec::with_capacity(expected.min(HIT_BLOCK)),
            full: Vec::new(),
            reserved: if budget.is_some() { 0 } else { usize::MAX },
            budget,
            counted: None,
            offered: [Hit::default(); OFFERED],
            n_offered: 0,
        }
    }

    /// Takes `hit` if `admitted`, without a branch on the verdict: the hit is written
    /// either way and counted only if admitted, so that a verdict that comes out at random
    /// costs no mispredicted branch.
    #[inline]
    pub(crate) fn offer(&mut self, hit: Hit, admitted: bool, plausible: &Plausible<'_>) {
        self.offered[self.n_offered] = hit;
        self.n_offered += usize::from(admitted);
        if self.n_offered == OFFERED {
            self.push_offered(plausible);
        }
    }

    /// Pushes the hits offered and admitted so far.
    fn push_offered(&mut self, plausible: &Plausible<'_>) {
        let n = std::mem::take(&mut self.n_offered);
        for i in 0..n {
            self.push(self.offered[i], plausible);
        }
    }

    /// Takes one admitted hit.
    #[inline]
    pub(crate) fn push(&mut self, hit: Hit, plausible: &Plausible<'_>) {
        if self.counted.is_none() && self.reserved == 0 {
            self.reserved = self.budget.map_or(0, Budget::take);
            if self.reserved == 0 {
                self.overflow(plausible);
            }
        }
        match &mut self.counted {
            Some(counted) => counted.add(&hit, plausible),
            None => {
                self.reserved -= 1;
                if self.hits.len() == HIT_BLOCK {
                    let block = std::mem::replace(&mut self.hits, Vec::with_capacity(HIT_BLOCK));
                    self.full.push(block);
                }
                self.hits.push(hit);
            }
        }
    }

    /// Hits kept.
    fn kept(&self) -> usize {
        self.full.iter().map(Vec::len).sum::<usize>() + self.hits.len()
    }

    /// Turns the kept hits into counts and frees them.
    fn overflow(&mut self, plausible: &Plausible<'_>) {
        let mut counted = Counted::default();
        for hit in self.full.iter().flatten().chain(&self.hits) {
            counted.add(hit, plausible);
        }
        self.hits = Vec::new();
        self.full = Vec::new();
        self.counted = Some(counted);
    }
}

/// The matcher's plausibility test with the query it indexes into.
pub(crate) struct Plausible<'q> {
    pub(crate) query: &'q [QueryQuad],
    pub(crate) range: matcher::TransformRange,
}

/// What a lookup into several sinks gave: every hit, or (when they outgrew the budget)
/// counts only.
pub(crate) enum Collected {
    /// The hits, in blocks (each from one lookup shard).
    All(Vec<Vec<Hit>>),
    /// The hits outgrew the budget; the passes that will hold them and the scope that
    /// their matching shares.
    Over {
        passes: Vec<RangeInclusive<TrackId>>,
        scope: PassScope,
    },
}

/// Ends a lookup into `sinks`: their hits if the budget held, else passes over `ids` of at
/// most `budget` hits each (see [`plan_passes`]).
pub(crate) fn collect(
    sinks: Vec<HitSink<'_>>,
    plausible: &Plausible<'_>,
    p: &MatchParams,
    ids: &RangeInclusive<TrackId>,
    budget: usize,
) -> Collected {
    let mut sinks = sinks;
    for sink in &mut sinks {
        sink.push_offered(plausible);
    }
    let kept: usize = sinks.iter().map(HitSink::kept).sum();
    if sinks.iter().all(|s| s.counted.is_none()) && kept <= budget {
        return Collected::All(
            sinks
                .into_iter()
                .flat_map(|s| s.full.into_iter().chain([s.hits]))
                .filter(|block| !block.is_empty())
                .collect(),
        );
    }
    let mut total = Counted::default();
    for mut sink in sinks {
        if sink.counted.is_none() {
            sink.overflow(plausible);
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
    // Tracks stored after this lookup (their ids are higher) are left out: the passes
    // search what this lookup counted.
    let last = counts.last().map_or(*ids.end(), |&(track, _)| track);
    let ids = *ids.start()..=last.min(*ids.end());
    Collected::Over {
        passes: plan_passes(&counts, &ids, budget),
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
    debug_assert!(counts.windows(2).all(|w| w[0].0 < w[1].0), "sorted, unique");
    let mut passes = Vec::new();
    let mut start = *ids.start();
    let mut held = 0usize;
    for &(track, n) in counts.iter().filter(|(t, _)| ids.contains(t)) {
        // `held > 0` means tracks from `start` up to before `track` were counted, so
        // `track > start` (the counts are sorted and unique).
        if held > 0
            && held.saturating_add(n) > budget
            && let Some(end) = track.checked_sub(1)
        {
            passes.push(start..=end);
            start = track;
            held = 0;
        }
        held = held.saturating_add(n);
    }
    passes.push(start..=*ids.end());
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one query quad the tests' hits name, at 10 frames, bin 50, spanning 20 frames.
    const QUERY: [QueryQuad; 1] = [QueryQuad {
        time: 10.0,
        bin: 50.0,
        span: 20.0,
    }];

    /// The plausibility test of [`QUERY`] under `p`.
    fn plausible(p: &MatchParams) -> Plausible<'static> {
        Plausible {
            query: &QUERY,
            range: matcher::TransformRange::new(p),
        }
    }

    fn lookup(budget: usize, per_sink: &[usize]) -> Collected {
        let p = MatchParams::default();
        let plausible = plausible(&p);
        let shared = Budget::new(budget, per_sink.len());
        let mut sinks: Vec<HitSink> = per_sink
            .iter()
            .map(|_| HitSink::new(Some(&shared), 16))
            .collect();
        for (sink, &n) in sinks.iter_mut().zip(per_sink) {
            for t in 0..n {
                let hit = Hit {
                    track: (t % 7) as TrackId,
                    query: 0,
                    r_time: t as u32,
                    r_bin: 50 * 64,
                    r_span: 20 * 16,
                };
                sink.push(hit, &plausible);
            }
        }
        collect(sinks, &plausible, &p, &(0..=TrackId::MAX), budget)
    }

    #[test]
    fn the_budget_is_shared_by_the_shards() {
        // One shard taking most of the hits does not overflow while the total fits (with
        // room for the batches the shards hold unused).
        let Collected::All(shards) = lookup(100_000, &[80_000, 10, 0, 15_000]) else {
            panic!("95,010 hits fit a budget of 100,000");
        };
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 95_010);
        // More than the budget: counted, and planned into passes within it.
        let Collected::Over { passes, scope } = lookup(100_000, &[80_000, 10, 0, 40_000]) else {
            panic!("120,010 hits do not fit a budget of 100,000");
        };
        assert_eq!(scope.n_tracks_hit, 7);
        // The decision is exact whatever the order in which shards took their batches.
        assert!(matches!(lookup(3_000, &[1_500, 1_500]), Collected::All(_)));
        assert!(matches!(lookup(3_000, &[3_000, 1]), Collected::Over { .. }));
        assert!(matches!(
            lookup(3_000, &[1, 1_499, 1_000, 500]),
            Collected::All(_)
        ));
        assert!(matches!(
            lookup(3_000, &[1, 1_500, 1_000, 500]),
            Collected::Over { .. }
        ));
        assert_eq!(passes.len(), 2, "{passes:?}");
        assert_eq!(*passes[1].end(), 6, "up to the last track counted");
    }

    #[test]
    fn offered_hits_are_kept_if_admitted_in_order() {
        let p = MatchParams::default();
        let plausible = plausible(&p);
        let mut sink = HitSink::new(None, 16);
        let hit = |t: u32| Hit {
            track: t % 5,
            query: 0,
            r_time: t,
            r_bin: 50 * 64,
            r_span: 20 * 16,
        };
        // Across several flushes of the offered hits, and some left over for `collect`.
        for t in 0..1_000 {
            sink.offer(hit(t), t % 3 != 0, &plausible);
        }
        let Collected::All(blocks) = collect(vec![sink], &plausible, &p, &(0..=9), usize::MAX)
        else {
            panic!("no budget, so everything is kept");
        };
        let kept: Vec<Hit> = blocks.into_iter().flatten().collect();
        let expected: Vec<Hit> = (0..1_000).filter(|t| t % 3 != 0).map(hit).collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn hits_beyond_a_block_are_all_kept_or_all_counted() {
        let n = 2 * HIT_BLOCK + 5;
        let Collected::All(blocks) = lookup(usize::MAX / 2, &[n, 3]) else {
            panic!("everything fits");
        };
        assert_eq!(blocks.iter().map(Vec::len).sum::<usize>(), n + 3);
        assert_eq!(
            blocks.len(),
            4,
            "three blocks of the first sink, one of the second"
        );
        assert!(blocks.iter().all(|b| b.len() <= HIT_BLOCK));
        // Over the budget after two full blocks: the counts cover every hit.
        let Collected::Over { passes, scope } = lookup(HIT_BLOCK, &[n, 3]) else {
            panic!("does not fit");
        };
        assert_eq!(scope.n_tracks_hit, 7);
        assert!(passes.len() >= 2, "{passes:?}");
    }

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
