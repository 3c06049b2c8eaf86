//! A track's *anchor table*: the distinct `(time, freq)` pairs of its postings, sorted,
//! bit-packed at fixed widths so that entry `i` is read directly.
//!
//! The fingerprint makes about 15 postings from each anchor peak (its pairs of partners),
//! each repeating the anchor's time and frequency, and a span that reaches a partner peak,
//! itself the anchor of postings of its own. The LMDB store keeps the pairs once per track
//! in this table and files each posting as ([`file`]):
//! - the index of its pair (13 bits for a five-minute track, where time and frequency
//!   took 30), in the time field;
//! - in the freq field, 1 + the distance from that index to the first entry whose time is
//!   the posting's time plus its span (a partner sits a few entries on: ~5 bits, where the
//!   span took 11), and the span field 0. The table gets an entry `(time + span, 0)` where
//!   no pair has that time, so this always works unless the distance exceeds a u16;
//! - failing that, freq 0 and the span as it is.
//!
//! A lookup reads the posting back ([`Anchors::read`]) before it visits it. Indices
//! follow the pairs' order, so postings of one key sort the same either way, and the
//! translation is lossless for any postings; it saves bits when spans are differences of
//! stored times, as the fingerprint's are (`fingerprint::TIME_SCALE`).
//!
//! Layout: the number of entries (u32 BE), the width in bits of a time and of a freq (one
//! byte each), then per entry its time and freq, big-endian bit order, padded with zero
//! bits to a whole byte. Tables are untrusted: [`Anchors::parse`] checks widths, length
//! and padding, and a lookup refuses an index past the end.

use crate::block::{BitWriter, bit_len, check_padded, read_bits};

/// Bytes of a table before its entries.
const HEADER_BYTES: usize = 4 + 1 + 1;

/// The distinct `(time, freq)` pairs of `pairs`, sorted, as the table is built from.
pub fn distinct(mut pairs: Vec<(u32, u16)>) -> Vec<(u32, u16)> {
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// The table for postings of `(time, freq, span)`: their distinct pairs, plus `(t, 0)` for
/// every time `t = time + span` (span > 0) that no pair has.
pub fn table(postings: &[(u32, u16, u16)]) -> Vec<(u32, u16)> {
    let pairs = distinct(postings.iter().map(|&(t, f, _)| (t, f)).collect());
    let missing: Vec<(u32, u16)> = postings
        .iter()
        .filter(|&&(_, _, span)| span > 0)
        .filter_map(|&(time, _, span)| time.checked_add(u32::from(span)))
        .filter(|&target| first_at(&pairs, target).is_none())
        .map(|target| (target, 0))
        .collect();
    if missing.is_empty() {
        return pairs;
    }
    let mut all = pairs;
    all.extend(missing);
    distinct(all)
}

/// Index of the first entry of `table` whose time is `time`.
fn first_at(table: &[(u32, u16)], time: u32) -> Option<usize> {
    let at = table.partition_point(|&(t, _)| t < time);
    (table.get(at)?.0 == time).then_some(at)
}

/// The stored fields of a posting `(time, freq, span)` whose pair is in `table` (built by
/// [`table`] from postings that include it).
pub fn file(table: &[(u32, u16)], time: u32, freq: u16, span: u16) -> (u32, u16, u16) {
    // Every pair is in the table, which has fewer entries than a u32 counts.
    let index = table.binary_search(&(time, freq)).unwrap_or_default();
    let partner = if span == 0 {
        Some(index)
    } else {
        time.checked_add(u32::from(span))
            .and_then(|target| first_at(table, target))
    };
    match partner.and_then(|at| u16::try_from(at - index + 1).ok()) {
        Some(distance) => (index as u32, distance, 0),
        None => (index as u32, 0, span),
    }
}

/// Encodes a table of `entries`, which must be sorted and distinct ([`distinct`]).
pub fn encode(entries: &[(u32, u16)]) -> Vec<u8> {
    debug_assert!(entries.windows(2).all(|pair| pair[0] < pair[1]));
    let time = bit_len(entries.iter().map(|e| e.0).max().unwrap_or(0));
    let freq = bit_len(u32::from(entries.iter().map(|e| e.1).max().unwrap_or(0)));
    // A table is one track's, far fewer than 2^32 entries before the store runs out of disk.
    let n = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let mut out =
        Vec::with_capacity(HEADER_BYTES + (entries.len() * usize::from(time + freq)).div_ceil(8));
    out.extend_from_slice(&n.to_be_bytes());
    out.push(time);
    out.push(freq);
    let mut writer = BitWriter::new(&mut out);
    for &(t, f) in entries {
        writer.put(t, time);
        writer.put(u32::from(f), freq);
    }
    writer.flush();
    out
}

/// A parsed table; borrows the stored bytes.
#[derive(Clone, Copy, Debug)]
pub struct Anchors<'a> {
    len: u32,
    time: u8,
    freq: u8,
    bits: &'a [u8],
}

impl<'a> Anchors<'a> {
    /// Parses and checks a stored table.
    pub fn parse(value: &'a [u8]) -> Result<Self, &'static str> {
        let (header, bits) = value
            .split_first_chunk::<HEADER_BYTES>()
            .ok_or("it is shorter than its header")?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let (time, freq) = (header[4], header[5]);
        if time > 32 || freq > 16 {
            return Err("its field widths are impossible");
        }
        let entry = u64::from(time) + u64::from(freq);
        // Entries are distinct, so zero-width entries can only be one.
        if entry == 0 && len > 1 {
            return Err("its entries repeat");
        }
        check_padded(
            bits,
            u64::from(len) * entry,
            "its length does not match its entries",
        )?;
        Ok(Self {
            len,
            time,
            freq,
            bits,
        })
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// The posting `(time, freq, span)` that [`file`] stored as `stored`, or `None` if
    /// its entries are missing or make no span.
    #[inline]
    pub fn read(&self, stored: (u32, u16, u16)) -> Option<(u32, u16, u16)> {
        let (index, distance, span) = stored;
        let (time, freq) = self.get(index)?;
        if distance == 0 {
            return Some((time, freq, span));
        }
        if span != 0 {
            return None;
        }
        let (partner, _) = self.get(index.checked_add(u32::from(distance) - 1)?)?;
        let span = u16::try_from(partner.checked_sub(time)?).ok()?;
        Some((time, freq, span))
    }

    /// Asks the processor to start loading entry `index` (a hint only: nothing is read,
    /// and an index past the end is ignored). A lookup resolves postings whose entries
    /// sit at random places of tables larger than the caches; hinting a few postings
    /// ahead overlaps those loads.
    #[inline]
    pub fn prefetch(&self, index: u32) {
        let at = u64::from(index) * (u64::from(self.time) + u64::from(self.freq)) / 8;
        if let Some(byte) = usize::try_from(at).ok().and_then(|at| self.bits.get(at)) {
            prefetch_read(byte);
        }
    }

    /// Entry `index`: `(time, freq)`, or `None` past the end.
    #[inline]
    pub fn get(&self, index: u32) -> Option<(u32, u16)> {
        if index >= self.len {
            return None;
        }
        let at = u64::from(index) * (u64::from(self.time) + u64::from(self.freq));
        let time = read_bits(self.bits, at, self.time);
        let freq = read_bits(self.bits, at + u64::from(self.time), self.freq) as u16;
        Some((time, freq))
    }
}

/// A hint to load the cache line holding `byte`.
#[inline]
fn prefetch_read(byte: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no effect on the program's state and never faults; the
    // pointer comes from a reference, so it is valid anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(byte).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::damage_bytes;
    use proptest::prelude::*;

    /// Files `postings` as the store does and reads them back through the encoded table.
    fn round_trip(postings: &[(u32, u16, u16)]) -> (Vec<u8>, Vec<(u32, u16, u16)>) {
        let entries = table(postings);
        let filed: Vec<_> = postings
            .iter()
            .map(|&(t, f, s)| file(&entries, t, f, s))
            .collect();
        let bytes = encode(&entries);
        let parsed = Anchors::parse(&bytes).expect("parses");
        let read = filed
            .iter()
            .map(|&stored| parsed.read(stored).expect("reads back"))
            .collect();
        (bytes, read)
    }

    proptest! {
        #[test]
        fn tables_round_trip(
            pairs in proptest::collection::vec(
                (prop_oneof![0u32..40_000, any::<u32>()], prop_oneof![0u16..13_000, any::<u16>()]),
                0..300,
            ),
        ) {
            let entries = distinct(pairs);
            let bytes = encode(&entries);
            let table = Anchors::parse(&bytes).expect("parses");
            prop_assert_eq!(table.len() as usize, entries.len());
            for (i, entry) in entries.iter().enumerate() {
                prop_assert_eq!(table.get(i as u32), Some(*entry));
            }
            prop_assert_eq!(table.get(entries.len() as u32), None);
            prop_assert_eq!(table.get(u32::MAX), None);
        }

        #[test]
        fn postings_read_back_as_filed(
            postings in proptest::collection::vec(
                (
                    prop_oneof![0u32..3_000, any::<u32>()],
                    prop_oneof![0u16..50, any::<u16>()],
                    prop_oneof![Just(0u16), 0u16..100, any::<u16>()],
                ),
                0..200,
            ),
        ) {
            let (_, read) = round_trip(&postings);
            prop_assert_eq!(read, postings);
        }

        #[test]
        fn damaged_tables_never_panic(
            pairs in proptest::collection::vec((0u32..5_000, 0u16..200), 1..50),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut bytes = encode(&distinct(pairs));
            damage_bytes(&mut bytes, &damage);
            if let Ok(table) = Anchors::parse(&bytes) {
                for i in 0..table.len().min(1_000) {
                    prop_assert!(table.get(i).is_some());
                }
            }
        }
    }

    #[test]
    fn spans_to_partners_are_distances_in_the_table() {
        // Anchors every 10 time units, each with postings spanning to the next two, as
        // the fingerprint's are: the spans become distances of 1 and 2 (stored + 1), the
        // span field is 0, and the table holds just the anchors.
        let postings: Vec<(u32, u16, u16)> = (0..20u32)
            .flat_map(|i| [(i * 10, (i % 3) as u16, 10), (i * 10, (i % 3) as u16, 20)])
            .collect();
        let entries = table(&postings);
        assert_eq!(
            entries.len(),
            22,
            "20 anchors and the two partner times past them"
        );
        assert_eq!(file(&entries, 50, 2, 10), (5, 2, 0));
        assert_eq!(file(&entries, 50, 2, 20), (5, 3, 0));
        // A span to no anchor's time adds an entry of its own; a zero span names itself.
        let mut odd = postings.clone();
        odd.push((50, 2, 7));
        odd.push((30, 0, 0));
        let entries = table(&odd);
        assert_eq!(entries.len(), 23);
        assert_eq!(file(&entries, 50, 2, 7), (5, 2, 0));
        assert_eq!(file(&entries, 30, 0, 0), (3, 1, 0));
        assert_eq!(round_trip(&odd).1, odd);
        // Past u32, the span stays as it is.
        let far = [(u32::MAX - 1, 0, 5)];
        assert_eq!(file(&table(&far), u32::MAX - 1, 0, 5), (0, 0, 5));
        assert_eq!(round_trip(&far).1, far);
    }

    #[test]
    fn damaged_postings_do_not_read() {
        let entries = table(&[(0, 0, 10), (10, 0, 10)]);
        let bytes = encode(&entries);
        let parsed = Anchors::parse(&bytes).expect("parses");
        assert_eq!(parsed.read((0, 2, 0)), Some((0, 0, 10)));
        // Past the end, a partner past the end, a distance with a span beside it.
        assert_eq!(parsed.read((3, 0, 1)), None);
        assert_eq!(parsed.read((0, 9, 0)), None);
        assert_eq!(parsed.read((0, 2, 4)), None);
        assert_eq!(parsed.read((u32::MAX, 2, 0)), None);
        let backwards = encode(&[(0, 0), (70_000, 0)]);
        let parsed = Anchors::parse(&backwards).expect("parses");
        assert_eq!(parsed.read((0, 2, 0)), None, "a span past u16");
    }

    #[test]
    fn tables_take_the_bits_their_largest_values_need() {
        // Times below 2^10, freqs below 2^7: 17 bits an entry.
        let entries: Vec<(u32, u16)> = (0..100u32).map(|i| (i * 10, (i % 100) as u16)).collect();
        let bytes = encode(&entries);
        assert_eq!(bytes[4..6], [10, 7]);
        assert_eq!(bytes.len(), HEADER_BYTES + (100 * 17usize).div_ceil(8));
    }

    #[test]
    fn damaged_tables_are_errors() {
        let bytes = encode(&[(1, 2), (5, 9), (700, 3)]);
        Anchors::parse(&bytes).expect("the original parses");
        for cut in 0..bytes.len() {
            assert!(Anchors::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Anchors::parse(&trailing).is_err());
        let mut padded = bytes.clone();
        *padded.last_mut().expect("bytes") |= 1;
        assert_eq!(
            Anchors::parse(&padded).err(),
            Some("its padding is not zero")
        );
        for (at, value) in [(4, 33), (5, 17), (3, 200)] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(Anchors::parse(&bad).is_err(), "byte {at} = {value}");
        }
        // Zero-width entries can only be one.
        assert!(Anchors::parse(&[0, 0, 0, 1, 0, 0]).is_ok());
        assert!(Anchors::parse(&[0, 0, 0, 2, 0, 0]).is_err());
    }
}
