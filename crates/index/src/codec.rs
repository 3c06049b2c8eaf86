//! Byte encodings shared by the backends: postings, per-track key lists and catalogue keys.
//!
//! Store files are untrusted input, so every decoder returns an error for malformed bytes
//! rather than panicking.

use crate::{Entry, IndexError, Posting, TrackId, TrackInfo};

/// Encoded size of one posting value: track, time, freq, span, all big-endian.
pub const POSTING_LEN_BYTES: usize = 12;

/// Encodes a posting so that byte order equals [`Posting`]'s `Ord` order.
pub fn encode_posting(posting: &Posting) -> [u8; POSTING_LEN_BYTES] {
    let mut out = [0u8; POSTING_LEN_BYTES];
    out[0..4].copy_from_slice(&posting.track.to_be_bytes());
    out[4..8].copy_from_slice(&posting.time.to_be_bytes());
    out[8..10].copy_from_slice(&posting.freq.to_be_bytes());
    out[10..12].copy_from_slice(&posting.span.to_be_bytes());
    out
}

/// Decodes a posting value, or `None` if it has the wrong length.
#[inline]
pub fn decode_posting(bytes: &[u8]) -> Option<Posting> {
    let bytes: &[u8; POSTING_LEN_BYTES] = bytes.try_into().ok()?;
    Some(Posting {
        track: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        time: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        freq: u16::from_be_bytes([bytes[8], bytes[9]]),
        span: u16::from_be_bytes([bytes[10], bytes[11]]),
    })
}

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

/// Encodes a strictly ascending key list as a count followed by LEB128 varint deltas.
///
/// Fingerprint keys are spread over the whole `u32` range, so deltas of a few thousand keys
/// per track take about three bytes each instead of four, and removal needs nothing else.
pub fn encode_key_list(sorted_unique_keys: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + sorted_unique_keys.len() * 3);
    // Lengths beyond u32 cannot occur because a key list holds distinct u32 values.
    write_varint(&mut out, sorted_unique_keys.len() as u32);
    let mut previous = 0u32;
    for &key in sorted_unique_keys {
        write_varint(&mut out, key.wrapping_sub(previous));
        previous = key;
    }
    out
}

/// Decodes [`encode_key_list`] output, checking that keys come out strictly ascending.
pub fn decode_key_list(bytes: &[u8]) -> Result<Vec<u32>, &'static str> {
    let mut cursor = bytes;
    let count = read_varint(&mut cursor)?;
    // Each key takes at least one byte, which bounds the allocation for hostile counts.
    if count as usize > cursor.len() {
        return Err("track key list is shorter than its count");
    }
    let mut keys = Vec::with_capacity(count as usize);
    let mut previous: Option<u32> = None;
    for _ in 0..count {
        let delta = read_varint(&mut cursor)?;
        let key = match previous {
            None => delta,
            Some(_) if delta == 0 => return Err("track key list repeats a key"),
            Some(previous) => previous
                .checked_add(delta)
                .ok_or("track key list overflows u32")?,
        };
        keys.push(key);
        previous = Some(key);
    }
    if !cursor.is_empty() {
        return Err("track key list has trailing bytes");
    }
    Ok(keys)
}

fn write_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(cursor: &mut &[u8]) -> Result<u32, &'static str> {
    let mut value = 0u32;
    for shift in [0u32, 7, 14, 21, 28] {
        let (&byte, rest) = cursor
            .split_first()
            .ok_or("track key list ends inside a number")?;
        *cursor = rest;
        let bits = u32::from(byte & 0x7f);
        if shift == 28 && bits > 0x0f {
            return Err("track key list number overflows u32");
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("track key list number is longer than five bytes")
}

/// Lookup keys sorted with their caller positions, packed as `key << 32 | index` so one
/// integer sort orders by key and keeps equal keys adjacent.
pub fn sort_queries(keys: &[u32]) -> Result<Vec<u64>, IndexError> {
    if u32::try_from(keys.len()).is_err() {
        return Err(IndexError::TooManyKeys { n_keys: keys.len() });
    }
    let mut queries: Vec<u64> = keys
        .iter()
        .enumerate()
        .map(|(index, &key)| (u64::from(key) << 32) | index as u64)
        .collect();
    queries.sort_unstable();
    Ok(queries)
}

/// The key of a packed query from [`sort_queries`].
#[inline]
pub fn query_key(query: u64) -> u32 {
    (query >> 32) as u32
}

/// The caller's index of a packed query from [`sort_queries`].
#[inline]
pub fn query_index(query: u64) -> usize {
    (query & 0xffff_ffff) as usize
}

/// Splits sorted packed queries into runs that share one key.
pub fn query_groups(queries: &[u64]) -> impl Iterator<Item = &[u64]> {
    queries.chunk_by(|a, b| query_key(*a) == query_key(*b))
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

    proptest! {
        #[test]
        fn key_list_round_trips(mut keys in proptest::collection::vec(any::<u32>(), 0..200)) {
            keys.sort_unstable();
            keys.dedup();
            let encoded = encode_key_list(&keys);
            prop_assert_eq!(decode_key_list(&encoded), Ok(keys));
        }

        #[test]
        fn key_list_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_key_list(&bytes);
        }

        #[test]
        fn posting_bytes_sort_like_postings(
            a in (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
            b in (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
        ) {
            let a = Posting { track: a.0, time: a.1, freq: a.2, span: a.3 };
            let b = Posting { track: b.0, time: b.1, freq: b.2, span: b.3 };
            prop_assert_eq!(encode_posting(&a).cmp(&encode_posting(&b)), a.cmp(&b));
            prop_assert_eq!(decode_posting(&encode_posting(&a)), Some(a));
        }
    }

    #[test]
    fn malformed_key_lists_are_errors() {
        assert!(decode_key_list(&[]).is_err());
        assert!(decode_key_list(&[2, 5]).is_err());
        assert!(decode_key_list(&[2, 5, 0]).is_err());
        assert!(decode_key_list(&[1, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert!(decode_key_list(&[1, 5, 9]).is_err());
        assert!(decode_key_list(&[2, 0xff, 0xff, 0xff, 0xff, 0x0f, 1]).is_err());
    }

    #[test]
    fn wrong_length_posting_is_rejected() {
        assert_eq!(decode_posting(&[0; 11]), None);
        assert_eq!(decode_posting(&[0; 13]), None);
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
