//! Key names and byte encodings of the cluster layout: where each piece of the store lives
//! and how postings are packed into bucket fields.
//!
//! Bucket values are untrusted input (anything can write to a cluster), so every decoder
//! returns an error for malformed bytes rather than panicking.

use index::{Posting, TrackId};

/// Cluster hash slots; fixed by the Redis Cluster specification.
pub const N_SLOTS: usize = 16384;

/// Bytes of one posting inside a chunk: time u32, freq u16, span u16, all big-endian.
pub const POSTING_BYTES: usize = 8;

/// Bytes of a chunk header: track id u32 BE, then the number of postings as one byte.
pub const CHUNK_HEADER_BYTES: usize = 5;

/// Most postings one chunk holds; a track with more under one key writes several chunks.
const MAX_CHUNK_POSTINGS: usize = u8::MAX as usize;

/// The names of every key a store with one prefix uses.
///
/// Catalogue keys share the hash tag `{prefix}`, so they sit in one slot and a Lua script
/// can change them together; bucket and manifest keys carry no tag, so the cluster spreads
/// them over every slot.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    tag: String,
}

impl Keys {
    /// Key names for a store under `prefix`, which must not contain braces (a brace would
    /// change which part of a key Redis hashes).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            tag: format!("{{{prefix}}}"),
        }
    }

    /// The hash-tagged prefix every catalogue key starts with; scripts append `:name`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A catalogue key (`{prefix}:name`).
    pub fn catalogue(&self, name: &str) -> String {
        format!("{}:{name}", self.tag)
    }

    /// The hash holding the postings of one bucket.
    pub fn bucket(&self, bucket: u32) -> String {
        format!("{}:b:{bucket}", self.prefix)
    }

    /// The string holding a track's side data (absent when it has none).
    pub fn side_data(&self, track: TrackId) -> String {
        format!("{}:s:{track}", self.prefix)
    }

    /// The string listing a track's distinct hash keys, read when its postings are purged.
    pub fn manifest(&self, track: TrackId) -> String {
        format!("{}:m:{track}", self.prefix)
    }
}

/// The bucket of a hash key among `2^bucket_bits`: the top bits of a multiplicative hash,
/// so buckets fill evenly whatever part of the `u32` range the keys use. Part of the
/// layout: changing it needs a new layout version.
#[inline]
pub fn bucket_of(key: u32, bucket_bits: u32) -> u32 {
    if bucket_bits == 0 {
        return 0;
    }
    key.wrapping_mul(0x9E37_79B1) >> (32 - bucket_bits)
}

/// The field of a hash key inside its bucket: the key as 4 big-endian bytes.
#[inline]
pub fn field_of(key: u32) -> [u8; 4] {
    key.to_be_bytes()
}

/// The cluster slot of a key: CRC16-XMODEM of the key (or of its `{tag}`) mod 16384, as the
/// Redis Cluster specification defines it.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    (crc16_xmodem(hashed) as usize % N_SLOTS) as u16
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Appends one track's postings under one key (sorted, all of `track`) as chunks.
///
/// A chunk is the track id (u32 BE), a count byte, then `count` postings of
/// [`POSTING_BYTES`]. The track id leads so the purge script can drop a track's chunks
/// without understanding postings.
pub fn encode_chunks(track: TrackId, postings: &[Posting], out: &mut Vec<u8>) {
    for part in postings.chunks(MAX_CHUNK_POSTINGS) {
        out.extend_from_slice(&track.to_be_bytes());
        out.push(part.len() as u8);
        for posting in part {
            out.extend_from_slice(&posting.time.to_be_bytes());
            out.extend_from_slice(&posting.freq.to_be_bytes());
            out.extend_from_slice(&posting.span.to_be_bytes());
        }
    }
}

/// Calls `visit` for every posting of a field value made of chunks, in stored order.
pub fn decode_chunks(bytes: &[u8], mut visit: impl FnMut(Posting)) -> Result<(), &'static str> {
    let mut cursor = bytes;
    while !cursor.is_empty() {
        let (header, rest) = cursor
            .split_first_chunk::<CHUNK_HEADER_BYTES>()
            .ok_or("it ends inside a chunk header")?;
        let track = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let count = usize::from(header[4]);
        let (body, rest) = rest
            .split_at_checked(count * POSTING_BYTES)
            .ok_or("it ends inside a chunk")?;
        for p in body.chunks_exact(POSTING_BYTES) {
            visit(Posting {
                track,
                time: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                freq: u16::from_be_bytes([p[4], p[5]]),
                span: u16::from_be_bytes([p[6], p[7]]),
            });
        }
        cursor = rest;
    }
    Ok(())
}

/// Encodes sorted, distinct hash keys as LEB128 varint deltas (about 3 bytes a key for a
/// track's ~10^4-10^5 keys spread over the `u32` range).
pub fn encode_manifest(sorted_keys: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sorted_keys.len() * 3);
    let mut previous = 0u32;
    for &key in sorted_keys {
        let mut delta = key.wrapping_sub(previous);
        previous = key;
        while delta >= 0x80 {
            out.push((delta as u8) | 0x80);
            delta >>= 7;
        }
        out.push(delta as u8);
    }
    out
}

/// Decodes [`encode_manifest`].
pub fn decode_manifest(bytes: &[u8]) -> Result<Vec<u32>, &'static str> {
    let mut keys = Vec::with_capacity(bytes.len() / 3);
    let mut previous = 0u32;
    let mut value = 0u32;
    let mut shift = 0u32;
    for &byte in bytes {
        if shift > 28 || (shift == 28 && byte & 0x7f > 0x0f) {
            return Err("a number overflows u32");
        }
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            previous = previous.wrapping_add(value);
            keys.push(previous);
            value = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    if shift != 0 {
        return Err("it ends inside a number");
    }
    Ok(keys)
}

/// Whether track `id` is set in the catalogue's live bitmap (Redis `SETBIT` numbers bits
/// from the most significant bit of byte 0).
#[inline]
pub fn is_live(bitmap: &[u8], id: TrackId) -> bool {
    bitmap
        .get((id / 8) as usize)
        .is_some_and(|byte| byte & (0x80 >> (id % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(track: TrackId, time: u32, freq: u16, span: u16) -> Posting {
        Posting {
            track,
            time,
            freq,
            span,
        }
    }

    #[test]
    fn slots_match_the_cluster_specification() {
        // Reference values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    #[test]
    fn chunks_round_trip_and_split_long_runs() {
        let postings: Vec<Posting> = (0..300).map(|i| posting(7, i, 3, u16::MAX)).collect();
        let mut bytes = Vec::new();
        encode_chunks(7, &postings, &mut bytes);
        encode_chunks(u32::MAX, &[posting(u32::MAX, u32::MAX, 0, 1)], &mut bytes);
        assert_eq!(
            bytes.len(),
            2 * CHUNK_HEADER_BYTES + 300 * POSTING_BYTES + CHUNK_HEADER_BYTES + POSTING_BYTES
        );
        let mut decoded = Vec::new();
        decode_chunks(&bytes, |p| decoded.push(p)).expect("decodes");
        assert_eq!(decoded[..300], postings[..]);
        assert_eq!(decoded[300], posting(u32::MAX, u32::MAX, 0, 1));
        for cut in [1, 4, 5, 6, 12] {
            assert!(
                decode_chunks(&bytes[..cut], |_| {}).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn manifests_round_trip() {
        let keys = vec![0, 1, 127, 128, 300, 1 << 20, u32::MAX - 1, u32::MAX];
        assert_eq!(decode_manifest(&encode_manifest(&keys)), Ok(keys));
        assert_eq!(decode_manifest(&[]), Ok(vec![]));
        assert!(decode_manifest(&[0x80]).is_err());
        assert!(decode_manifest(&[0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }

    #[test]
    fn buckets_stay_in_range_and_spread() {
        let mut counts = [0u32; 16];
        for key in 0..16_000u32 {
            let bucket = bucket_of(key, 4);
            counts[bucket as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(bucket_of(u32::MAX, 0), 0);
        assert!(bucket_of(u32::MAX, 20) < 1 << 20);
    }

    #[test]
    fn live_bits_follow_setbit_order() {
        let bitmap = [0b1000_0001, 0b0100_0000];
        assert!(is_live(&bitmap, 0));
        assert!(is_live(&bitmap, 7));
        assert!(is_live(&bitmap, 9));
        assert!(!is_live(&bitmap, 1));
        assert!(!is_live(&bitmap, 100));
    }
}
