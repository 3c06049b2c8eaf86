//! Byte encodings shared by the backends: posting lists, runs and catalogue keys.
//!
//! Store files are untrusted input, so every decoder returns an error for malformed bytes
//! rather than panicking.

use crate::{Entry, IndexError, Posting, TrackId, TrackInfo};

/// Turns caller entries into `(key, posting)` pairs sorted by key then posting, without
/// exact duplicates; sorted input lets the backends insert sequentially.
pub fn prepare_entries(track: TrackId, entries: &[Entry]) -> Vec<(u32, Posting)> {
    let mut prepared: Vec<(u32, Posting)> = entries
        .iter()
        .map(|&(key, time, freq, span)| {
            (
                key,
                Posting {
                    track,
                    time,
                    freq,
                    span,
                },
            )
        })
        .collect();
    prepared.sort_unstable();
    prepared.dedup();
    prepared
}

/// Number of key partitions of the LMDB store's main tier; each merges on its own.
pub const N_PARTITIONS: usize = 16;

/// A mask with one bit per partition, all set.
pub const ALL_PARTITIONS: u32 = (1 << N_PARTITIONS) - 1;

/// The partition of a key: the top bits of a multiplicative hash of its block
/// ([`crate::block::block_of`]), so a block's keys share a partition and partitions are
/// even whatever part of the `u32` range the keys occupy. Part of the on-disk format:
/// changing it (or [`N_PARTITIONS`]) needs a new format version.
#[inline]
pub fn partition_of(key: u32) -> usize {
    let block = crate::block::block_of(key);
    (block.wrapping_mul(0x9E37_79B1) >> (32 - N_PARTITIONS.trailing_zeros())) as usize
}

/// Bytes of one run record: key, time, freq, span, all big-endian (the track is the run's).
pub const RUN_RECORD_BYTES: usize = 12;

/// Bytes of a run's header: the record index where each partition's section starts, plus
/// the total, as u32 BE.
const RUN_HEADER_BYTES: usize = (N_PARTITIONS + 1) * 4;

/// Encodes one track's postings as a run: a header of section offsets, then fixed-width
/// records sorted by (partition, key, posting), so each partition's records are one
/// contiguous, key-sorted section that lookups can gallop through without decoding.
///
/// `prepared` must be sorted by [`run_order`] and free of duplicates.
pub fn encode_run(prepared: &[(u32, Posting)]) -> Vec<u8> {
    debug_assert!(prepared.is_sorted_by_key(|&(key, posting)| run_order(key, &posting)));
    let mut out = Vec::with_capacity(RUN_HEADER_BYTES + prepared.len() * RUN_RECORD_BYTES);
    let mut start = 0usize;
    for partition in 0..N_PARTITIONS {
        out.extend_from_slice(&(start as u32).to_be_bytes());
        start += prepared[start..].partition_point(|&(key, _)| partition_of(key) <= partition);
    }
    out.extend_from_slice(&(prepared.len() as u32).to_be_bytes());
    for (key, posting) in prepared {
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&posting.time.to_be_bytes());
        out.extend_from_slice(&posting.freq.to_be_bytes());
        out.extend_from_slice(&posting.span.to_be_bytes());
    }
    out
}

/// The order of a run's records.
#[inline]
pub fn run_order(key: u32, posting: &Posting) -> (usize, u32, Posting) {
    (partition_of(key), key, *posting)
}

/// A parsed run; borrows the stored bytes.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    offsets: [u32; N_PARTITIONS + 1],
    records: &'a [u8],
}

impl<'a> Run<'a> {
    /// Checks a run's header against its length; records themselves need no checking.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, &'static str> {
        let (header, records) = bytes
            .split_at_checked(RUN_HEADER_BYTES)
            .ok_or("it is shorter than its header")?;
        let mut offsets = [0u32; N_PARTITIONS + 1];
        for (offset, chunk) in offsets.iter_mut().zip(header.chunks_exact(4)) {
            *offset = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        if offsets[0] != 0 || !offsets.is_sorted() {
            return Err("its section offsets are not ascending from 0");
        }
        if records.len() != offsets[N_PARTITIONS] as usize * RUN_RECORD_BYTES {
            return Err("its length does not match its record count");
        }
        Ok(Self { offsets, records })
    }

    /// Number of records in the run.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.offsets[N_PARTITIONS] as usize
    }

    /// The records of one partition.
    pub fn section(&self, partition: usize) -> Section<'a> {
        let start = self.offsets[partition] as usize * RUN_RECORD_BYTES;
        let end = self.offsets[partition + 1] as usize * RUN_RECORD_BYTES;
        Section {
            records: &self.records[start..end],
        }
    }
}

/// The key-sorted records of one partition of a [`Run`].
#[derive(Clone, Copy, Debug)]
pub struct Section<'a> {
    records: &'a [u8],
}

impl Section<'_> {
    /// Number of records.
    #[inline]
    pub fn len(&self) -> usize {
        self.records.len() / RUN_RECORD_BYTES
    }

    /// Whether the section has no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The bytes of records `from..to` (`from <= to <= len()`), for a reader that accounts
    /// for what it touched.
    pub fn records_bytes(&self, from: usize, to: usize) -> &[u8] {
        &self.records[from * RUN_RECORD_BYTES..to * RUN_RECORD_BYTES]
    }

    #[inline]
    fn record(&self, index: usize) -> &[u8; RUN_RECORD_BYTES] {
        let start = index * RUN_RECORD_BYTES;
        self.records[start..start + RUN_RECORD_BYTES]
            .try_into()
            .unwrap_or(&[0; RUN_RECORD_BYTES])
    }

    /// The key of record `index` (< `len()`).
    #[inline]
    pub fn key(&self, index: usize) -> u32 {
        let r = self.record(index);
        u32::from_be_bytes([r[0], r[1], r[2], r[3]])
    }

    /// Record `index` (< `len()`) as a posting of `track`.
    #[inline]
    pub fn posting(&self, index: usize, track: TrackId) -> Posting {
        let r = self.record(index);
        Posting {
            track,
            time: u32::from_be_bytes([r[4], r[5], r[6], r[7]]),
            freq: u16::from_be_bytes([r[8], r[9]]),
            span: u16::from_be_bytes([r[10], r[11]]),
        }
    }

    /// The first index at or after `from` whose key is at least `key`: gallops forward
    /// then bisects, so a walk over ascending keys costs little whether they are dense or
    /// sparse in the section. Records need not be sorted for this to be safe.
    #[inline]
    pub fn seek(&self, from: usize, key: u32) -> usize {
        let n = self.len();
        if from >= n || self.key(from) >= key {
            return from;
        }
        // Invariant: key(low) < key; find the bracket (low, high] holding the answer.
        let mut low = from;
        let mut step = 1usize;
        let mut high = from + 1;
        while high < n && self.key(high) < key {
            low = high;
            step *= 2;
            high = low.saturating_add(step);
        }
        let mut high = high.min(n);
        let mut low = low + 1;
        while low < high {
            let mid = low + (high - low) / 2;
            if self.key(mid) < key {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

/// Lookup keys in key order, each with its caller's position, as every backend visits them.
#[derive(Debug)]
pub struct SortedQueries<'k> {
    keys: &'k [u32],
    /// The keys packed as `key << 32 | position` and sorted (one integer sort orders by key
    /// and keeps equal keys adjacent, in caller order); `None` when the caller's keys are
    /// already in order and serve as they are.
    packed: Option<Vec<u64>>,
}

/// Puts lookup keys in key order. Keys that already are (the engine sorts its own) are
/// used in place: a sorted copy costs 8 bytes a key, 23 MB for a 3-minute query.
pub fn sort_queries(keys: &[u32]) -> Result<SortedQueries<'_>, IndexError> {
    if u32::try_from(keys.len()).is_err() {
        return Err(IndexError::TooManyKeys { n_keys: keys.len() });
    }
    if keys.is_sorted() {
        return Ok(SortedQueries { keys, packed: None });
    }
    let mut packed: Vec<u64> = keys
        .iter()
        .enumerate()
        .map(|(index, &key)| (u64::from(key) << 32) | index as u64)
        .collect();
    packed.sort_unstable();
    Ok(SortedQueries {
        keys,
        packed: Some(packed),
    })
}

impl SortedQueries<'_> {
    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The runs of queries that share one key, in key order.
    pub fn groups(&self) -> QueryGroups<'_> {
        QueryGroups {
            keys: self.keys,
            packed: self.packed.as_deref(),
            next: 0,
        }
    }
}

/// Iterator over the [`QueryGroup`]s of [`SortedQueries`].
#[derive(Clone, Debug)]
pub struct QueryGroups<'a> {
    keys: &'a [u32],
    packed: Option<&'a [u64]>,
    next: usize,
}

impl QueryGroups<'_> {
    #[inline]
    fn key_at(&self, rank: usize) -> u32 {
        match self.packed {
            Some(packed) => (packed[rank] >> 32) as u32,
            None => self.keys[rank],
        }
    }
}

impl<'a> Iterator for QueryGroups<'a> {
    type Item = QueryGroup<'a>;

    fn next(&mut self) -> Option<QueryGroup<'a>> {
        let start = self.next;
        if start >= self.keys.len() {
            return None;
        }
        let key = self.key_at(start);
        let mut end = start + 1;
        while end < self.keys.len() && self.key_at(end) == key {
            end += 1;
        }
        self.next = end;
        Some(QueryGroup {
            key,
            ranks: start..end,
            packed: self.packed,
        })
    }
}

/// The queries of one key.
#[derive(Clone, Debug)]
pub struct QueryGroup<'a> {
    key: u32,
    /// Positions in key order.
    ranks: std::ops::Range<usize>,
    packed: Option<&'a [u64]>,
}

impl QueryGroup<'_> {
    /// The key.
    #[inline]
    pub fn key(&self) -> u32 {
        self.key
    }

    /// Calls `visit(i, posting)` for each of the key's `postings` in order, and for each
    /// posting for each of the caller's positions `i` of the key, ascending: the order
    /// [`crate::Store::lookup`] visits in.
    #[inline]
    pub fn visit(&self, postings: &[Posting], mut visit: impl FnMut(usize, Posting)) {
        for &posting in postings {
            for i in self.indices() {
                visit(i, posting);
            }
        }
    }

    /// The caller's positions of the key, ascending.
    #[inline]
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        let packed = self.packed;
        self.ranks
            .clone()
            .map(move |rank| packed.map_or(rank, |p| (p[rank] & 0xffff_ffff) as usize))
    }
}

/// Checks the parts of a catalogue entry that every backend must be able to store.
pub fn validate_track_info(info: &TrackInfo) -> Result<(), IndexError> {
    // JSON cannot represent NaN or infinities, and a negative length is meaningless.
    if !info.duration_s.is_finite() || info.duration_s < 0.0 {
        return Err(IndexError::InvalidTrack {
            reason: format!(
                "duration_s is {}, but must be finite and not negative",
                info.duration_s
            ),
        });
    }
    Ok(())
}

/// Checks side data against the limit every backend enforces.
pub fn validate_side_data(side_data: &[u8]) -> Result<(), IndexError> {
    if side_data.len() > crate::MAX_SIDE_DATA_BYTES {
        return Err(IndexError::InvalidTrack {
            reason: format!(
                "side data of {} bytes exceeds the limit of {}",
                side_data.len(),
                crate::MAX_SIDE_DATA_BYTES
            ),
        });
    }
    Ok(())
}

/// Checks a scan result against the rules of [`crate::Store::record_scan`] that do not
/// depend on the store's content.
pub fn validate_scan(
    query: TrackId,
    examined: &std::ops::RangeInclusive<TrackId>,
    found: &[(TrackId, Vec<u8>)],
) -> Result<(), IndexError> {
    let mut seen = std::collections::HashSet::with_capacity(found.len());
    for (reference, payload) in found {
        let reason = if *reference == query {
            format!("track {query} cannot be related to itself")
        } else if !examined.contains(reference) {
            format!(
                "reference {reference} lies outside the examined ids {}..={}",
                examined.start(),
                examined.end()
            )
        } else if !seen.insert(*reference) {
            format!("reference {reference} appears twice")
        } else if payload.len() > crate::MAX_RELATION_PAYLOAD_BYTES {
            format!(
                "the payload for reference {reference} has {} bytes, more than {}",
                payload.len(),
                crate::MAX_RELATION_PAYLOAD_BYTES
            )
        } else {
            continue;
        };
        return Err(IndexError::InvalidRelation { reason });
    }
    Ok(())
}

/// The descriptive fields of `new` over the identity and size fields of `stored`.
pub fn merged_metadata(stored: &TrackInfo, new: &TrackInfo) -> TrackInfo {
    TrackInfo {
        title: new.title.clone(),
        artist: new.artist.clone(),
        album: new.album.clone(),
        year: new.year,
        musicbrainz_recording_id: new.musicbrainz_recording_id.clone(),
        musicbrainz_release_id: new.musicbrainz_release_id.clone(),
        ..stored.clone()
    }
}

/// A duration in whole microseconds, for exact running totals that removal can subtract.
pub fn duration_us(duration_s: f64) -> u64 {
    // `as` saturates, and validation has already rejected NaN and negatives.
    (duration_s * 1e6).round() as u64
}

/// Catalogue strings up to this many bytes are used verbatim as keys; LMDB's default key
/// limit is 511 bytes, and this leaves room for the tag byte with margin.
const INLINE_KEY_MAX_BYTES: usize = 400;

/// Tag byte of a catalogue key holding the whole string.
const TAG_INLINE: u8 = 0;
/// Tag byte of a catalogue key holding a prefix plus a hash of the whole string.
const TAG_HASHED: u8 = 1;

/// Builds the key under which a path or content hash is filed.
///
/// Long strings (deeply nested paths) exceed LMDB's key limit, so they are filed under a
/// prefix plus a 64-bit hash; [`catalogue_key_is_exact`] tells the caller to double-check
/// the stored string in that case.
pub fn catalogue_key(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    if bytes.len() <= INLINE_KEY_MAX_BYTES {
        let mut key = Vec::with_capacity(1 + bytes.len());
        key.push(TAG_INLINE);
        key.extend_from_slice(bytes);
        key
    } else {
        let mut key = Vec::with_capacity(1 + INLINE_KEY_MAX_BYTES + 16);
        key.push(TAG_HASHED);
        key.extend_from_slice(&bytes[..INLINE_KEY_MAX_BYTES]);
        key.extend_from_slice(&fnv1a_64(bytes).to_be_bytes());
        key.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        key
    }
}

/// Whether [`catalogue_key`] keeps the whole string, so a hit needs no verification.
pub fn catalogue_key_is_exact(value: &str) -> bool {
    value.len() <= INLINE_KEY_MAX_BYTES
}

/// FNV-1a: tiny, dependency-free, and good enough to separate long paths that share their
/// first 400 bytes; a collision is caught by verifying the stored path.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_group_sections_by_partition() {
        let mut prepared: Vec<(u32, Posting)> = (0..500u32)
            .map(|i| {
                let key = i.wrapping_mul(2_654_435_761) % 97;
                (
                    key,
                    Posting {
                        track: 4,
                        time: i,
                        freq: i as u16,
                        span: 3,
                    },
                )
            })
            .collect();
        prepared.sort_unstable_by_key(|&(key, posting)| run_order(key, &posting));
        let bytes = encode_run(&prepared);
        let run = Run::parse(&bytes).expect("parses");
        assert_eq!(run.len(), 500);
        let mut seen = Vec::new();
        for partition in 0..N_PARTITIONS {
            let section = run.section(partition);
            for i in 0..section.len() {
                assert_eq!(partition_of(section.key(i)), partition);
                seen.push((section.key(i), section.posting(i, 4)));
            }
            // Seeking finds the first record with a key at least the target.
            for target in [0, 5, 50, 96, 200] {
                for from in [0, section.len() / 2, section.len()] {
                    let found = section.seek(from, target);
                    let expected = (from..section.len())
                        .find(|&i| section.key(i) >= target)
                        .unwrap_or(section.len().max(from));
                    assert_eq!(
                        found, expected,
                        "partition {partition} from {from} to {target}"
                    );
                }
            }
        }
        assert_eq!(seen, prepared);
        assert!(Run::parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(Run::parse(&bytes[..10]).is_err());
        let mut bad = bytes.clone();
        bad[3] = 1;
        assert!(Run::parse(&bad).is_err());
        let empty = encode_run(&[]);
        assert_eq!(Run::parse(&empty).expect("empty run").len(), 0);
    }

    proptest! {
        /// Keys already in order are used in place, and give the groups a sorted copy would:
        /// each key once, ascending, with its caller positions ascending.
        #[test]
        fn sorted_queries_group_keys_in_order(keys in proptest::collection::vec(0u32..40, 0..120)) {
            let mut expected: Vec<(u32, Vec<usize>)> = Vec::new();
            let mut by_key: Vec<(u32, usize)> =
                keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
            by_key.sort_unstable();
            for run in by_key.chunk_by(|a, b| a.0 == b.0) {
                expected.push((run[0].0, run.iter().map(|&(_, i)| i).collect()));
            }
            let groups = |queries: &SortedQueries| -> Vec<(u32, Vec<usize>)> {
                queries.groups().map(|g| (g.key(), g.indices().collect())).collect()
            };
            let queries = sort_queries(&keys).expect("sort");
            prop_assert_eq!(groups(&queries), expected.clone());

            let mut sorted = keys.clone();
            sorted.sort_unstable();
            let queries = sort_queries(&sorted).expect("sort");
            prop_assert!(queries.packed.is_none());
            let sorted_expected: Vec<(u32, Vec<usize>)> = {
                let mut start = 0;
                expected
                    .iter()
                    .map(|(key, indices)| {
                        let range = start..start + indices.len();
                        start += indices.len();
                        (*key, range.collect())
                    })
                    .collect()
            };
            prop_assert_eq!(groups(&queries), sorted_expected);
        }
    }

    #[test]
    fn partitions_are_even() {
        // 4,096 blocks of keys.
        let mut counts = [0u32; N_PARTITIONS];
        for key in 0..(1u32 << 24) {
            counts[partition_of(key)] += 1;
        }
        let expected = (1u32 << 24) / N_PARTITIONS as u32;
        for count in counts {
            assert!(count.abs_diff(expected) < expected / 20, "{counts:?}");
        }
    }

    #[test]
    fn long_catalogue_keys_are_bounded_and_distinct() {
        let long_a = format!("{}a", "x".repeat(1000));
        let long_b = format!("{}b", "x".repeat(1000));
        assert!(catalogue_key(&long_a).len() < 511);
        assert_ne!(catalogue_key(&long_a), catalogue_key(&long_b));
        assert!(!catalogue_key_is_exact(&long_a));
        assert!(catalogue_key_is_exact("short"));
        assert_ne!(catalogue_key(""), Vec::<u8>::new());
    }
}
