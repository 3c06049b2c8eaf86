//! The compact byte form in which a reference's peaks are stored for verification.
//!
//! Layout: a version byte, a LEB128 peak count, then per peak (sorted by time) the time as
//! a LEB128 delta from the previous peak in quarter frames, and the bin as a little-endian
//! u16 in 1/64 bins ([`crate::FREQ_SCALE`]). Quarter frames are 1 ms at the default hop,
//! well inside the two-frame tolerance of verification; about 3.5 bytes a peak.

use crate::{FREQ_SCALE, Peak};

const VERSION: u8 = 1;
/// Time quantum of the stored form, per frame.
const TIME_STEPS_PER_FRAME: f32 = 4.0;

/// A stored peak list that cannot be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("damaged peak list: {0}")]
pub struct PeakListError(&'static str);

/// Encodes peaks (any order; they are sorted by time) into the stored form.
pub fn encode(peaks: &[Peak]) -> Vec<u8> {
    let mut quantised: Vec<(u64, u16)> = peaks
        .iter()
        .filter(|p| p.time.is_finite() && p.bin.is_finite())
        .map(|p| {
            (
                (p.time.max(0.0) * TIME_STEPS_PER_FRAME).round() as u64,
                (p.bin.max(0.0) * FREQ_SCALE).round().min(u16::MAX as f32) as u16,
            )
        })
        .collect();
    quantised.sort_unstable();
    let mut out = Vec::with_capacity(4 + quantised.len() * 4);
    out.push(VERSION);
    put_varint(&mut out, quantised.len() as u64);
    let mut previous = 0u64;
    for (time, bin) in quantised {
        put_varint(&mut out, time - previous);
        previous = time;
        out.extend_from_slice(&bin.to_le_bytes());
    }
    out
}

/// Decodes the stored form into (time in frames, bin) pairs sorted by time.
pub fn decode(bytes: &[u8]) -> Result<Vec<(f32, f32)>, PeakListError> {
    let (&version, mut rest) = bytes.split_first().ok_or(PeakListError("empty"))?;
    if version != VERSION {
        return Err(PeakListError("unknown version"));
    }
    let count = get_varint(&mut rest)?;
    // Each peak takes at least three bytes, which bounds the allocation by the input.
    if count > (rest.len() / 3) as u64 {
        return Err(PeakListError("count larger than the data"));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut time = 0u64;
    for _ in 0..count {
        time = time
            .checked_add(get_varint(&mut rest)?)
            .ok_or(PeakListError("time overflows"))?;
        let (bin, tail) = rest
            .split_first_chunk::<2>()
            .ok_or(PeakListError("truncated"))?;
        rest = tail;
        out.push((
            time as f32 / TIME_STEPS_PER_FRAME,
            u16::from_le_bytes(*bin) as f32 / FREQ_SCALE,
        ));
    }
    if !rest.is_empty() {
        return Err(PeakListError("trailing bytes"));
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Result<u64, PeakListError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(PeakListError("truncated"))?;
        *input = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(PeakListError("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(time: f32, bin: f32) -> Peak {
        Peak {
            time,
            bin,
            strength: 0.0,
        }
    }

    #[test]
    fn round_trip_within_quantisation() {
        let peaks = vec![
            peak(1000.3, 17.2),
            peak(0.0, 0.0),
            peak(3.9, 197.9),
            peak(1000.3, 5.0),
            peak(1_000_000.0, 100.01),
        ];
        let decoded = decode(&encode(&peaks)).expect("decodes");
        let mut expected: Vec<(f32, f32)> = peaks.iter().map(|p| (p.time, p.bin)).collect();
        expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        assert_eq!(decoded.len(), expected.len());
        for (d, e) in decoded.iter().zip(&expected) {
            assert!((d.0 - e.0).abs() <= 0.125, "time {d:?} vs {e:?}");
            assert!((d.1 - e.1).abs() <= 0.5 / FREQ_SCALE, "bin {d:?} vs {e:?}");
        }
        assert_eq!(decode(&encode(&[])).expect("empty list"), vec![]);
    }

    #[test]
    fn damaged_lists_are_errors() {
        let good = encode(&[peak(5.0, 5.0), peak(9.0, 9.0)]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let mut version = good.clone();
        version[0] = 9;
        assert!(decode(&version).is_err());
        // A count claiming more peaks than the bytes could hold allocates nothing.
        let mut huge = vec![VERSION];
        put_varint(&mut huge, u64::MAX / 2);
        assert!(decode(&huge).is_err());
        assert!(
            decode(&[
                VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
    }
}
