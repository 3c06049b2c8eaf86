//! The LMDB main tier's unit of storage: a *block* holds the posting lists of the
//! [`BLOCK_KEYS`] consecutive hash keys that share `key >> BLOCK_BITS`, bit-packed.
//!
//! One LMDB entry per key cost about 13 bytes of node and key for a list of ~5 postings of
//! ~8 bytes; a block pays that once for up to 4,096 lists. Blocks are that large because
//! LMDB keeps a value of over about 2 KB in whole pages of its own: blocks of 64 keys
//! (1.4 KB on average at 7.4 hours of music, more as the store grows) lost about a fifth
//! of the file to the rest of their last page; a block of 4,096 keys loses a few percent
//! (BENCHMARKS.md, session 15). A lookup reads only the pages of the lists it wants, so a
//! large block costs it nothing but parsing the counts once. Within a block every field is
//! stored at the fewest bits that the block's largest value needs, after dropping the low
//! bits that are zero in every value of the block: a fingerprint that stores times,
//! frequencies or spans on a coarser grid than their units (as ours does) costs no bits
//! for the grid. The store learns nothing about the fields to do this; they stay opaque.
//!
//! Layout of a block value:
//! - the number `n` of keys with a list, u16 BE, 1 to [`BLOCK_KEYS`];
//! - which keys: if `n` is at most [`SPARSE_MAX`], their slots `i` (key
//!   `block << BLOCK_BITS | i`) on 12 bits each, ascending, big-endian bit order, padded
//!   with zero bits to a whole byte; else the presence bitmap, [`BLOCK_KEYS`] / 64 words of
//!   u64 BE, bit `i % 64` (from the least significant) of word `i / 64` set when slot `i`
//!   has a list (a small store's blocks are sparse, and a bitmap would be most of them);
//! - the format, 8 bytes: the width of a list's count and of a list's track width, then
//!   width and dropped low bits of time, freq and span ([`Format`]);
//! - the bit stream, big-endian bit order, padded with zero bits to a whole byte:
//!   - per present key in ascending order, its number of postings less one, and the
//!     width `w` of its list's tracks;
//!   - per list, per posting in order, the track (absolute for a list's first posting,
//!     else the delta from the previous posting's track) on `w` bits, then time, freq and
//!     span, each shifted right by its dropped bits.
//!
//! Track ids are the one field whose width differs by list: a list's first track is small
//! (the least of its tracks) and its deltas are about the number of tracks over the list's
//! length, while the largest delta in a block of 4,096 lists is far larger (at 100 hours,
//! 10 bits where a list needs 7).
//!
//! Values are untrusted (a damaged or tampered file): [`Block::parse`] checks that the
//! counts and widths describe exactly the bytes present, and every posting takes at least
//! one bit, so no damaged count can make a decoder loop or allocate beyond the value's
//! size; decoding never panics.

use crate::Posting;

/// Bits of a key that address its list within a block.
pub const BLOCK_BITS: u32 = 12;

/// Keys per block.
pub const BLOCK_KEYS: usize = 1 << BLOCK_BITS;

/// The block holding `key`'s list.
#[inline]
pub fn block_of(key: u32) -> u32 {
    key >> BLOCK_BITS
}

#[inline]
fn slot_of(key: u32) -> usize {
    (key as usize) & (BLOCK_KEYS - 1)
}

/// Words of a block's presence bitmap.
const BITMAP_WORDS: usize = BLOCK_KEYS / 64;

/// Bytes of a block's presence bitmap.
const BITMAP_BYTES: usize = BITMAP_WORDS * 8;

/// Bits of a slot in a sparse block's list of slots.
const SLOT_BITS: u8 = BLOCK_BITS as u8;

/// Most lists a block lists by slot rather than by bitmap: where the slots take fewer
/// bytes.
const SPARSE_MAX: usize = BITMAP_BYTES * 8 / SLOT_BITS as usize;

/// Bytes of a block's list of `n` slots.
fn slots_bytes(n: usize) -> usize {
    (n * usize::from(SLOT_BITS)).div_ceil(8)
}

/// How a block packs its postings: the widths of its lists' headers, a width in bits per
/// field and, for time, freq and span, the number of low bits dropped (zero in every
/// value of the block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Format {
    /// Width of a list's count less one.
    count: u8,
    /// Width of a list's track width.
    track: u8,
    time: u8,
    time_shift: u8,
    freq: u8,
    freq_shift: u8,
    span: u8,
    span_shift: u8,
}

impl Format {
    fn to_bytes(self) -> [u8; 8] {
        [
            self.count,
            self.track,
            self.time,
            self.time_shift,
            self.freq,
            self.freq_shift,
            self.span,
            self.span_shift,
        ]
    }

    fn from_bytes(b: [u8; 8]) -> Result<Self, &'static str> {
        let format = Self {
            count: b[0],
            track: b[1],
            time: b[2],
            time_shift: b[3],
            freq: b[4],
            freq_shift: b[5],
            span: b[6],
            span_shift: b[7],
        };
        // A time of at least one bit makes every posting cost a bit, which bounds counts
        // by the value's length; widths plus shifts must fit the field's type.
        let fits =
            |width: u8, shift: u8, bits: u8| u16::from(width) + u16::from(shift) <= u16::from(bits);
        if format.count > 32
            || format.track > 6
            || format.time == 0
            || !fits(format.time, format.time_shift, 32)
            || !fits(format.freq, format.freq_shift, 16)
            || !fits(format.span, format.span_shift, 16)
        {
            return Err("its field widths are impossible");
        }
        Ok(format)
    }

    /// Bits of every posting but its track.
    fn payload_bits(self) -> u64 {
        u64::from(self.time) + u64::from(self.freq) + u64::from(self.span)
    }

    /// Bits of a list's header: its count and its track width.
    fn header_bits(self) -> u64 {
        u64::from(self.count) + u64::from(self.track)
    }

    /// Bits of a list of `n` postings whose tracks take `track` bits.
    fn list_bits(self, n: u64, track: u8) -> u64 {
        n * (u64::from(track) + self.payload_bits())
    }
}

/// The width of a list's tracks: what its first track and its largest delta need.
fn track_width(list: &[Posting]) -> u8 {
    let mut widest = list.first().map_or(0, |p| p.track);
    for pair in list.windows(2) {
        widest = widest.max(pair[1].track - pair[0].track);
    }
    bit_len(widest)
}

/// Fewest bits that hold `value`.
pub(crate) fn bit_len(value: u32) -> u8 {
    (32 - value.leading_zeros()) as u8
}

/// Low bits that are zero in every value whose bitwise OR is `or`, at most `max` (0 for
/// no values or all zero).
fn common_zeros(or: u32, max: u8) -> u8 {
    if or == 0 {
        0
    } else {
        (or.trailing_zeros() as u8).min(max)
    }
}

/// Collects the lists of one block, then encodes them with [`BlockBuilder::finish`].
#[derive(Debug, Default)]
pub struct BlockBuilder {
    keys: Vec<u32>,
    ends: Vec<usize>,
    postings: Vec<Posting>,
}

impl BlockBuilder {
    /// The block of the lists added so far, or `None` when there are none.
    pub fn block(&self) -> Option<u32> {
        self.keys.first().map(|&key| block_of(key))
    }

    /// Adds `key`'s list. Keys must ascend within one block; the list must be non-empty,
    /// sorted as [`Posting`]'s `Ord` and free of duplicates.
    pub fn push(&mut self, key: u32, list: &[Posting]) {
        debug_assert!(!list.is_empty() && list.is_sorted());
        debug_assert!(self.block().is_none_or(|block| block == block_of(key)));
        debug_assert!(self.keys.last().is_none_or(|&last| last < key));
        self.keys.push(key);
        self.postings.extend_from_slice(list);
        self.ends.push(self.postings.len());
    }

    /// Appends the block of the lists added so far to `out` and starts a new one; returns
    /// the block's id, or `None` (writing nothing) when no list was added.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Option<u32> {
        let block = self.block()?;
        let format = self.format();
        // At most BLOCK_KEYS lists, which a u16 holds.
        out.extend_from_slice(&(self.keys.len() as u16).to_be_bytes());
        if self.keys.len() <= SPARSE_MAX {
            let mut writer = BitWriter::new(out);
            for &key in &self.keys {
                writer.put(slot_of(key) as u32, SLOT_BITS);
            }
            writer.flush();
        } else {
            let mut present = [0u64; BITMAP_WORDS];
            for &key in &self.keys {
                present[slot_of(key) / 64] |= 1 << (slot_of(key) % 64);
            }
            for word in present {
                out.extend_from_slice(&word.to_be_bytes());
            }
        }
        out.extend_from_slice(&format.to_bytes());
        let mut writer = BitWriter::new(out);
        let mut begin = 0;
        for &end in &self.ends {
            // A list is one key's postings of distinct (track, time, freq, span), far
            // fewer than 2^32 before the store runs out of track ids or disk.
            let count = u32::try_from(end - begin).unwrap_or(u32::MAX);
            writer.put(count - 1, format.count);
            writer.put(
                u32::from(track_width(&self.postings[begin..end])),
                format.track,
            );
            begin = end;
        }
        let mut begin = 0;
        for &end in &self.ends {
            let list = &self.postings[begin..end];
            let width = track_width(list);
            let mut previous = 0;
            for posting in list {
                writer.put(posting.track - previous, width);
                previous = posting.track;
                writer.put(posting.time >> format.time_shift, format.time);
                writer.put(u32::from(posting.freq >> format.freq_shift), format.freq);
                writer.put(u32::from(posting.span >> format.span_shift), format.span);
            }
            begin = end;
        }
        writer.flush();
        self.keys.clear();
        self.ends.clear();
        self.postings.clear();
        Some(block)
    }

    fn format(&self) -> Format {
        let (mut count, mut track) = (0u32, 0u8);
        let (mut time_or, mut freq_or, mut span_or) = (0u32, 0u16, 0u16);
        let mut begin = 0;
        for &end in &self.ends {
            let list = &self.postings[begin..end];
            count = count.max(u32::try_from(list.len() - 1).unwrap_or(u32::MAX));
            track = track.max(track_width(list));
            for posting in list {
                time_or |= posting.time;
                freq_or |= posting.freq;
                span_or |= posting.span;
            }
            begin = end;
        }
        let time_shift = common_zeros(time_or, 31);
        let freq_shift = common_zeros(u32::from(freq_or), 15);
        let span_shift = common_zeros(u32::from(span_or), 15);
        // The largest value of a field has the same bit length as the OR of them all.
        Format {
            count: bit_len(count),
            track: bit_len(u32::from(track)),
            time: bit_len(time_or >> time_shift).max(1),
            time_shift,
            freq: bit_len(u32::from(freq_or >> freq_shift)),
            freq_shift,
            span: bit_len(u32::from(span_or >> span_shift)),
            span_shift,
        }
    }
}

/// Writes values of up to 32 bits, most significant bit first.
pub(crate) struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    buffer: u64,
    filled: u32,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            buffer: 0,
            filled: 0,
        }
    }

    pub(crate) fn put(&mut self, value: u32, width: u8) {
        if width == 0 {
            return;
        }
        let width = u32::from(width);
        debug_assert!(
            width == 32 || value >> width == 0,
            "{value} needs more than {width} bits"
        );
        self.buffer = (self.buffer << width) | u64::from(value);
        self.filled += width;
        while self.filled >= 8 {
            self.filled -= 8;
            self.out.push((self.buffer >> self.filled) as u8);
        }
    }

    pub(crate) fn flush(&mut self) {
        if self.filled > 0 {
            self.out.push((self.buffer << (8 - self.filled)) as u8);
            self.filled = 0;
        }
    }
}

/// Checks that `bits` holds exactly `n_bits` bits padded with zero bits to a whole byte, as
/// [`BitWriter`] writes them; `mismatch` says what a wrong length means.
pub(crate) fn check_padded(
    bits: &[u8],
    n_bits: u64,
    mismatch: &'static str,
) -> Result<(), &'static str> {
    if n_bits.div_ceil(8) != bits.len() as u64 {
        return Err(mismatch);
    }
    let used = (n_bits % 8) as u32;
    match bits.last() {
        Some(&last) if used > 0 && last & (0xff >> used) != 0 => Err("its padding is not zero"),
        _ => Ok(()),
    }
}

/// Reads `width` (at most 32) bits at bit `pos` of `bits`; bits past the end read as 0.
#[inline]
pub(crate) fn read_bits(bits: &[u8], pos: u64, width: u8) -> u32 {
    if width == 0 {
        return 0;
    }
    let byte = (pos / 8) as usize;
    let word = match bits.get(byte..byte.saturating_add(8)) {
        Some(eight) => u64::from_be_bytes(eight.try_into().unwrap_or([0; 8])),
        None => {
            let mut buffer = [0u8; 8];
            let tail = bits.get(byte..).unwrap_or(&[]);
            buffer[..tail.len()].copy_from_slice(tail);
            u64::from_be_bytes(buffer)
        }
    };
    ((word << (pos % 8)) >> (64 - u32::from(width))) as u32
}

/// A parsed block; borrows the stored bytes.
#[derive(Clone, Debug)]
pub struct Block<'a> {
    id: u32,
    present: [u64; BITMAP_WORDS],
    format: Format,
    /// Per slot, the number of postings (0: no list), the list's first bit and the width
    /// of its tracks.
    counts: Vec<u32>,
    starts: Vec<u64>,
    widths: Vec<u8>,
    bits: &'a [u8],
    value: &'a [u8],
}

impl<'a> Block<'a> {
    /// Parses and checks the value stored for block `id`.
    pub fn parse(id: u32, value: &'a [u8]) -> Result<Self, &'static str> {
        if id > block_of(u32::MAX) {
            return Err("its block id is out of range");
        }
        let too_short = "it is shorter than a block header";
        let (n, rest) = value.split_first_chunk::<2>().ok_or(too_short)?;
        let n = usize::from(u16::from_be_bytes(*n));
        if n == 0 || n > BLOCK_KEYS {
            return Err("its number of lists is impossible");
        }
        let mut present = [0u64; BITMAP_WORDS];
        let rest = if n <= SPARSE_MAX {
            let (slots, rest) = rest.split_at_checked(slots_bytes(n)).ok_or(too_short)?;
            let mut previous = None;
            for i in 0..n {
                let slot = read_bits(slots, i as u64 * u64::from(SLOT_BITS), SLOT_BITS) as usize;
                if previous.is_some_and(|previous| previous >= slot) {
                    return Err("its slots do not ascend");
                }
                previous = Some(slot);
                present[slot / 64] |= 1 << (slot % 64);
            }
            check_padded(slots, n as u64 * u64::from(SLOT_BITS), too_short)?;
            rest
        } else {
            let (bitmap, rest) = rest.split_at_checked(BITMAP_BYTES).ok_or(too_short)?;
            for (word, bytes) in present.iter_mut().zip(bitmap.chunks_exact(8)) {
                *word = u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]));
            }
            let set: u32 = present.iter().map(|word| word.count_ones()).sum();
            if set as usize != n {
                return Err("its bitmap does not hold its number of lists");
            }
            rest
        };
        let (format, bits) = rest.split_first_chunk::<8>().ok_or(too_short)?;
        let format = Format::from_bytes(*format)?;
        let n_lists = n as u64;
        let available = bits.len() as u64 * 8;
        // The headers come first; checked before reading them, so a damaged width cannot
        // make the reads below run past the value.
        let mut total_bits = n_lists * format.header_bits();
        if total_bits > available {
            return Err("its length does not match its lists");
        }
        let mut counts = vec![0u32; BLOCK_KEYS];
        let mut starts = vec![0u64; BLOCK_KEYS];
        let mut widths = vec![0u8; BLOCK_KEYS];
        let mut at = 0u64;
        for slot in 0..BLOCK_KEYS {
            if present[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let count = read_bits(bits, at, format.count)
                .checked_add(1)
                .ok_or("a list is impossibly long")?;
            at += u64::from(format.count);
            let width = read_bits(bits, at, format.track) as u8;
            at += u64::from(format.track);
            if width > 32 {
                return Err("a list's track width is impossible");
            }
            counts[slot] = count;
            starts[slot] = total_bits;
            widths[slot] = width;
            total_bits = total_bits
                .checked_add(format.list_bits(u64::from(count), width))
                .filter(|&total| total <= available)
                .ok_or("its length does not match its lists")?;
        }
        check_padded(bits, total_bits, "its length does not match its lists")?;
        Ok(Self {
            id,
            present,
            format,
            counts,
            starts,
            widths,
            bits,
            value,
        })
    }

    /// The block's id (its keys' common `key >> BLOCK_BITS`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The first key of the block at or after `key` that has a list (`key` in or before
    /// this block).
    pub fn next_key(&self, key: u32) -> Option<u32> {
        let from = match block_of(key).cmp(&self.id) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => slot_of(key),
            std::cmp::Ordering::Greater => return None,
        };
        let mut word = from / 64;
        let mut rest = self.present[word] >> (from % 64) << (from % 64);
        while rest == 0 {
            word += 1;
            rest = *self.present.get(word)?;
        }
        let slot = word * 64 + rest.trailing_zeros() as usize;
        Some((self.id << BLOCK_BITS) | slot as u32)
    }

    /// The value from its start through the last byte of `list` (one of this block's):
    /// what a reader that has come as far as `list` has read of it.
    pub fn read_through(&self, list: &List<'a>) -> &'a [u8] {
        let bits_at = self.value.len() - self.bits.len();
        let end = list
            .start
            .saturating_add(self.format.list_bits(u64::from(list.count), list.width))
            .div_ceil(8);
        let end = usize::try_from(end).map_or(self.value.len(), |end| bits_at + end);
        &self.value[..end.min(self.value.len())]
    }

    /// The list of `key`, if this block holds one.
    pub fn list(&self, key: u32) -> Option<List<'a>> {
        let slot = slot_of(key);
        (block_of(key) == self.id && self.counts[slot] != 0).then(|| List {
            bits: self.bits,
            start: self.starts[slot],
            count: self.counts[slot],
            width: self.widths[slot],
            format: self.format,
        })
    }

    /// Every key of the block with its list, ascending.
    #[cfg(any(test, feature = "testsuite"))]
    pub fn lists(&self) -> impl Iterator<Item = (u32, List<'a>)> + '_ {
        (0..BLOCK_KEYS).filter_map(move |slot| {
            let key = (self.id << BLOCK_BITS) | slot as u32;
            self.list(key).map(|list| (key, list))
        })
    }
}

/// One key's postings inside a parsed [`Block`].
#[derive(Clone, Copy, Debug)]
pub struct List<'a> {
    bits: &'a [u8],
    start: u64,
    count: u32,
    /// Width of a track (the first) or track delta (the rest).
    width: u8,
    format: Format,
}

impl List<'_> {
    /// Number of postings (checked against the block's length when it was parsed).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Calls `visit` for every posting in order.
    pub fn decode(&self, mut visit: impl FnMut(Posting)) -> Result<(), &'static str> {
        self.decode_while(|posting| {
            visit(posting);
            true
        })
    }

    /// Calls `visit` for the postings in order until it returns false (postings come
    /// sorted by track, so a caller wanting tracks up to some id stops past it).
    #[inline]
    pub fn decode_while(&self, mut visit: impl FnMut(Posting) -> bool) -> Result<(), &'static str> {
        let f = self.format;
        let mut pos = self.start;
        let mut track = 0u32;
        for _ in 0..self.count {
            track = track
                .checked_add(read_bits(self.bits, pos, self.width))
                .ok_or("a track id overflows u32")?;
            pos += u64::from(self.width);
            let time = read_bits(self.bits, pos, f.time) << f.time_shift;
            pos += u64::from(f.time);
            let freq = (read_bits(self.bits, pos, f.freq) << f.freq_shift) as u16;
            pos += u64::from(f.freq);
            let span = (read_bits(self.bits, pos, f.span) << f.span_shift) as u16;
            pos += u64::from(f.span);
            if !visit(Posting {
                track,
                time,
                freq,
                span,
            }) {
                break;
            }
        }
        Ok(())
    }
}

/// Damages `bytes` as the proptests of stored values do: each `(at, value, how)`
/// overwrites (`how` 0), removes (1) or inserts (otherwise) a byte at `at` modulo the
/// length. Valid values damaged this way reach far more of a parser than random bytes.
#[cfg(test)]
pub(crate) fn damage_bytes(bytes: &mut Vec<u8>, damage: &[(usize, u8, u8)]) {
    for &(at, value, how) in damage {
        let at = at % (bytes.len() + 1);
        match how {
            0 if at < bytes.len() => bytes[at] = value,
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes of a block of `n` lists before its bit stream: the number, the slots or
    /// bitmap, the format.
    fn header_bytes(n: usize) -> usize {
        2 + if n <= SPARSE_MAX {
            slots_bytes(n)
        } else {
            BITMAP_BYTES
        } + 8
    }

    fn encode(lists: &[(u32, Vec<Posting>)]) -> Vec<u8> {
        let mut builder = BlockBuilder::default();
        for (key, list) in lists {
            builder.push(*key, list);
        }
        let mut out = Vec::new();
        builder.finish(&mut out);
        out
    }

    fn decode_all(block: &Block) -> Vec<(u32, Vec<Posting>)> {
        block
            .lists()
            .map(|(key, list)| {
                let mut postings = Vec::new();
                list.decode(|p| postings.push(p)).expect("decodes");
                (key, postings)
            })
            .collect()
    }

    fn posting(track: u32, time: u32, freq: u16, span: u16) -> Posting {
        Posting {
            track,
            time,
            freq,
            span,
        }
    }

    /// The lists of block `id` from generated (slot, postings) pairs: keys addressed in the
    /// block, postings sorted and without duplicates, as stores hand them over.
    fn block_lists(
        id: u32,
        raw: std::collections::BTreeMap<u32, Vec<(u32, u32, u16, u16)>>,
    ) -> Vec<(u32, Vec<Posting>)> {
        raw.into_iter()
            .map(|(slot, raw)| {
                let mut list: Vec<Posting> = raw
                    .into_iter()
                    .map(|(a, b, c, d)| posting(a, b, c, d))
                    .collect();
                list.sort_unstable();
                list.dedup();
                ((id << BLOCK_BITS) | slot, list)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn blocks_round_trip(
            id in prop_oneof![0u32..4, Just(block_of(u32::MAX))],
            raw in proptest::collection::btree_map(
                0u32..BLOCK_KEYS as u32,
                proptest::collection::vec(
                    (
                        prop_oneof![0u32..6, any::<u32>()],
                        prop_oneof![(0u32..300).prop_map(|t| t * 2), any::<u32>()],
                        prop_oneof![(0u16..400).prop_map(|f| f * 32), any::<u16>()],
                        prop_oneof![Just(0u16), any::<u16>()],
                    ),
                    1..20,
                ),
                1..12,
            ),
        ) {
            let lists = block_lists(id, raw);
            let bytes = encode(&lists);
            let block = Block::parse(id, &bytes).expect("parses");
            prop_assert_eq!(decode_all(&block), lists.clone());
            for (key, list) in &lists {
                prop_assert_eq!(block.list(*key).map(|l| l.len()), Some(list.len()));
                prop_assert_eq!(block.next_key(*key), Some(*key));
            }
        }

        #[test]
        fn damaged_blocks_never_panic(
            lists in proptest::collection::btree_map(
                0u32..BLOCK_KEYS as u32,
                proptest::collection::vec((0u32..40, any::<u32>(), any::<u16>(), 0u16..64), 1..8),
                1..6,
            ),
            damage in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            // Valid blocks, then bytes overwritten, removed or inserted: random bytes would
            // almost never get past the header's checks.
            let lists = block_lists(0, lists);
            let mut bytes = encode(&lists);
            damage_bytes(&mut bytes, &damage);
            if let Ok(block) = Block::parse(0, &bytes) {
                let mut n = 0usize;
                for (_, list) in block.lists() {
                    let _ = list.decode(|_| n += 1);
                }
                // Every posting takes at least one bit of the value.
                prop_assert!(n <= bytes.len() * 8);
            }
        }
    }

    #[test]
    fn fields_on_a_grid_cost_no_bits_for_it() {
        // Times on multiples of 2, freqs of 32, spans of 16: the dropped bits are the grid.
        let list: Vec<Posting> = (0..100u32)
            .map(|i| {
                posting(
                    i,
                    2 * (i * 37 % 1000),
                    (i % 300) as u16 * 32,
                    (i % 100) as u16 * 16,
                )
            })
            .collect();
        let bytes = encode(&[(5, list.clone())]);
        let block = Block::parse(0, &bytes).expect("parses");
        assert_eq!(block.format.time_shift, 1);
        assert_eq!(block.format.freq_shift, 5);
        assert_eq!(block.format.span_shift, 4);
        // The list's header: its count less one (99) on 7 bits, its track width (1) on 1;
        // then per posting the track (0, then deltas of 1) on 1 bit, time 10, freq 7,
        // span 7.
        let bits: usize = 7 + 1 + 100 * (1 + 10 + 7 + 7);
        assert_eq!(bytes.len(), header_bytes(1) + bits.div_ceil(8));
        assert_eq!(decode_all(&block), vec![(5, list)]);
    }

    #[test]
    fn next_key_and_list_address_the_block() {
        // Block 1, with lists in its first and last bitmap words and words between empty.
        let base = BLOCK_KEYS as u32;
        let last = base + BLOCK_KEYS as u32 - 1;
        let lists = vec![
            (base + 3, vec![posting(1, 10, 20, 30)]),
            (base + 40, vec![posting(2, 10, 20, 30), posting(9, 1, 2, 3)]),
            (last, vec![posting(4, 1, 1, 1)]),
        ];
        let bytes = encode(&lists);
        let block = Block::parse(1, &bytes).expect("parses");
        assert_eq!(block.next_key(0), Some(base + 3));
        assert_eq!(block.next_key(base + 3), Some(base + 3));
        assert_eq!(block.next_key(base + 4), Some(base + 40));
        assert_eq!(block.next_key(base + 41), Some(last));
        assert_eq!(block.next_key(base + 64), Some(last));
        assert_eq!(block.next_key(last), Some(last));
        assert_eq!(block.next_key(last + 1), None);
        assert!(block.list(3).is_none(), "key 3 is in block 0");
        assert!(block.list(base + 2).is_none());
        assert_eq!(block.list(base + 40).map(|l| l.len()), Some(2));
        // What a reader has read once it has come to a list: the value up to its end.
        let first = block.list(base + 3).expect("present");
        let through = block.read_through(&first).len();
        assert!(through > header_bytes(3) && through < bytes.len());
        let final_list = block.list(last).expect("present");
        assert_eq!(block.read_through(&final_list).len(), bytes.len());
        // Stopping early visits no further.
        let mut seen = Vec::new();
        block
            .list(base + 40)
            .expect("present")
            .decode_while(|p| {
                seen.push(p.track);
                false
            })
            .expect("decodes");
        assert_eq!(seen, vec![2]);
    }

    #[test]
    fn dense_blocks_keep_a_bitmap() {
        // Past SPARSE_MAX lists the slots would take more bytes than the bitmap.
        let lists: Vec<(u32, Vec<Posting>)> = (0..SPARSE_MAX as u32 + 1)
            .map(|slot| (BLOCK_KEYS as u32 + slot * 3 % BLOCK_KEYS as u32, slot))
            .collect::<std::collections::BTreeMap<u32, u32>>()
            .into_iter()
            .map(|(key, slot)| (key, vec![posting(slot, slot, 1, 2)]))
            .collect();
        assert_eq!(lists.len(), SPARSE_MAX + 1);
        let bytes = encode(&lists);
        assert_eq!(bytes[..2], (SPARSE_MAX as u16 + 1).to_be_bytes());
        let block = Block::parse(1, &bytes).expect("parses");
        assert_eq!(decode_all(&block), lists);
        assert!(bytes.len() > header_bytes(lists.len()));
        // A bitmap that disagrees with the number of lists is refused.
        let mut miscounted = bytes.clone();
        miscounted[2] ^= 0x80;
        assert_eq!(
            Block::parse(1, &miscounted).err(),
            Some("its bitmap does not hold its number of lists")
        );
        // One list fewer is listed by slot, in no more bytes than the bitmap.
        let sparse = encode(&lists[1..]);
        assert_eq!(sparse[..2], (SPARSE_MAX as u16).to_be_bytes());
        assert!(slots_bytes(SPARSE_MAX) <= BITMAP_BYTES && sparse.len() < bytes.len());
        let block = Block::parse(1, &sparse).expect("parses");
        assert_eq!(decode_all(&block), lists[1..].to_vec());
    }

    #[test]
    fn damaged_blocks_are_errors() {
        let lists = vec![
            (3, vec![posting(1, 1000, 700, 300), posting(1, 1200, 1, 2)]),
            (9, vec![posting(9, 5, 3, 4)]),
        ];
        let bytes = encode(&lists);
        Block::parse(0, &bytes).expect("the original parses");
        for cut in 0..bytes.len() {
            assert!(Block::parse(0, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Block::parse(0, &trailing).is_err());
        let mut padded = bytes.clone();
        *padded.last_mut().expect("bytes") |= 1;
        assert_eq!(
            Block::parse(0, &padded).err(),
            Some("its padding is not zero")
        );
        let mut no_lists = bytes.clone();
        no_lists[..2].fill(0);
        assert!(Block::parse(0, &no_lists).is_err());
        // Two lists: their slots (3 and 9) on 12 bits each, then the format.
        let format_at = 2 + 3;
        assert_eq!(bytes[2..format_at], [0x00, 0x30, 0x09]);
        let mut descending = bytes.clone();
        descending[2..format_at].copy_from_slice(&[0x00, 0x90, 0x03]);
        assert_eq!(
            Block::parse(0, &descending).err(),
            Some("its slots do not ascend")
        );
        let mut too_many = bytes.clone();
        too_many[..2].copy_from_slice(&(BLOCK_KEYS as u16 + 1).to_be_bytes());
        assert!(Block::parse(0, &too_many).is_err());
        // A width that cannot hold its field, or a zero-bit time, is refused.
        // Format bytes 3 and 7 (time and span shifts) leave the length as it was: only the
        // check of width plus shift against the field's type refuses them.
        for (at, value) in [
            (0, 33),
            (1, 7),
            (2, 0),
            (2, 33),
            (3, 32),
            (4, 17),
            (5, 16),
            (6, 17),
            (7, 17),
        ] {
            let mut bad = bytes.clone();
            bad[format_at + at] = value;
            assert!(Block::parse(0, &bad).is_err(), "byte {at} = {value}");
        }
        // A huge count in a short value is refused before anything is decoded.
        let mut huge = bytes.clone();
        huge[format_at] = 32;
        huge[format_at + 8..format_at + 12].fill(0xff);
        assert!(Block::parse(0, &huge).is_err());
        // A list's track width over 32 is refused.
        // One list, at slot 0.
        let mut wide = vec![0, 1, 0, 0];
        wide.extend_from_slice(&[0, 6, 1, 0, 0, 0, 0, 0]);
        let mut writer = BitWriter::new(&mut wide);
        writer.put(33, 6);
        writer.put(0, 33 + 1 - 32);
        writer.put(0, 32);
        writer.flush();
        assert_eq!(
            Block::parse(0, &wide).err(),
            Some("a list's track width is impossible")
        );
        // Track ids that overflow are refused rather than wrapped: a list of two postings
        // (count less one on 1 bit) with tracks on 32 bits (6 bits say so), a first track
        // of u32::MAX and time 0 (1 bit), then a delta of 1 and time 0.
        let mut overflow = vec![0, 1, 0, 0];
        overflow.extend_from_slice(&[1, 6, 1, 0, 0, 0, 0, 0]);
        let mut writer = BitWriter::new(&mut overflow);
        for (value, width) in [(1, 1), (32, 6), (u32::MAX, 32), (0, 1), (1, 32), (0, 1)] {
            writer.put(value, width);
        }
        writer.flush();
        let block = Block::parse(0, &overflow).expect("parses");
        let result = block.list(0).expect("present").decode(|_| {});
        assert_eq!(result, Err("a track id overflows u32"));
    }
}
