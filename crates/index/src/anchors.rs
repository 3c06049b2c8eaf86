//! A track's *anchor table*: the distinct `(time, freq)` pairs of its postings, sorted,
//! bit-packed at fixed widths so that entry `i` is read directly.
//!
//! The fingerprint makes about 15 postings from each anchor peak (its pairs of partners),
//! each repeating the anchor's time and frequency. The LMDB store keeps those once per track
//! in this table and files each posting under the index of its pair instead (13 bits for a
//! five-minute track, where time and frequency took 30), with the frequency field 0 and the
//! span as it is; a lookup reads the pair back before it visits the posting. Indices follow
//! the pairs' order, so postings sort the same either way and the translation is lossless.
//!
//! Layout: the number of entries (u32 BE), the width in bits of a time and of a freq (one
//! byte each), then per entry its time and freq, big-endian bit order, padded with zero
//! bits to a whole byte. Tables are untrusted: [`Anchors::parse`] checks widths, length
//! and padding, and a lookup refuses an index past the end.

use crate::block::{BitWriter, bit_len, read_bits};

/// Bytes of a table before its entries.
const HEADER_BYTES: usize = 4 + 1 + 1;

/// The distinct `(time, freq)` pairs of `pairs`, sorted, as the table is built from.
pub fn distinct(mut pairs: Vec<(u32, u16)>) -> Vec<(u32, u16)> {
    pairs.sort_unstable();
    pairs.dedup();
    pairs
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
        let total = u64::from(len) * entry;
        if total.div_ceil(8) != bits.len() as u64 {
            return Err("its length does not match its entries");
        }
        let used = (total % 8) as u32;
        if let Some(&last) = bits.last()
            && used > 0
            && last & (0xff >> used) != 0
        {
            return Err("its padding is not zero");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        fn damaged_tables_never_panic(
            pairs in proptest::collection::vec((0u32..5_000, 0u16..200), 1..50),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut bytes = encode(&distinct(pairs));
            for (at, value, how) in damage {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] = value,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, value),
                }
            }
            if let Ok(table) = Anchors::parse(&bytes) {
                for i in 0..table.len().min(1_000) {
                    prop_assert!(table.get(i).is_some());
                }
            }
        }
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
