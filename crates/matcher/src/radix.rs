//! A stable radix sort by an integer key, for the large sorts of identify.
//!
//! Identify sorts millions of small records by integer keys: the query's triplets by hash,
//! each reference's hits by query triplet and time, each reference's vote keys. A
//! comparison sort spends about log2(n) passes over the data (14 for the 20,000 hits a
//! reference typically has against a 3-minute song); this sort spends one pass per
//! 12-bit digit of the bits in which the keys actually differ (3-5 for those keys), and
//! skips the bits that every key shares.

/// Bits of the key taken per pass: 4,096 counters (16 KB) a digit stay in the L1 cache.
const DIGIT_BITS: u32 = 12;
const BUCKETS: usize = 1 << DIGIT_BITS;
/// Below this length the standard library's sort is faster than counting.
const SMALL: usize = 256;

/// Sorts `items` by `key`, stably (items with equal keys keep their order), as
/// `items.sort_by_key(key)` would. `scratch` is working space of `items`' length, kept by
/// the caller so that repeated sorts do not allocate; its contents are left unspecified.
pub fn sort_by_key<T: Copy>(items: &mut Vec<T>, scratch: &mut Vec<T>, key: impl Fn(&T) -> u64) {
    if items.len() < SMALL || u32::try_from(items.len()).is_err() {
        items.sort_by_key(&key);
        return;
    }
    let first = key(&items[0]);
    let varying = items.iter().fold(0u64, |acc, x| acc | (key(x) ^ first));
    let digits = digit_shifts(varying);
    if digits.is_empty() {
        return;
    }
    // Every digit's counts in one pass, then each digit's bucket starts.
    let mut counts = vec![[0u32; BUCKETS]; digits.len()];
    for x in items.iter() {
        let k = key(x);
        for (c, &shift) in counts.iter_mut().zip(&digits) {
            c[digit(k, shift)] += 1;
        }
    }
    scratch.clear();
    scratch.resize(items.len(), items[0]);
    for (c, &shift) in counts.iter_mut().zip(&digits) {
        let mut start = 0u32;
        for n in c.iter_mut() {
            let here = *n;
            *n = start;
            start += here;
        }
        for x in items.iter() {
            let slot = &mut c[digit(key(x), shift)];
            scratch[*slot as usize] = *x;
            *slot += 1;
        }
        std::mem::swap(items, scratch);
    }
}

/// The low bit of each digit to sort by, lowest first: digits start at the lowest bit
/// that varies and skip the runs of bits that do not.
fn digit_shifts(varying: u64) -> Vec<u32> {
    let mut shifts = Vec::new();
    let mut shift = 0u32;
    while shift < u64::BITS && varying >> shift != 0 {
        shift += (varying >> shift).trailing_zeros();
        shifts.push(shift);
        shift += DIGIT_BITS;
    }
    shifts
}

#[inline]
fn digit(key: u64, shift: u32) -> usize {
    ((key >> shift) as usize) & (BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(items: Vec<(u64, u32)>) {
        let mut expected = items.clone();
        expected.sort_by_key(|x| x.0);
        let mut sorted = items;
        let mut scratch = Vec::new();
        sort_by_key(&mut sorted, &mut scratch, |x| x.0);
        assert_eq!(sorted, expected);
    }

    /// Items tagged with their position, so that stability shows.
    fn tagged(keys: Vec<u64>) -> Vec<(u64, u32)> {
        keys.into_iter().zip(0..).collect()
    }

    proptest! {
        #[test]
        fn sorts_as_the_standard_stable_sort(keys in proptest::collection::vec(any::<u64>(), 0..2000)) {
            check(tagged(keys));
        }

        #[test]
        fn keeps_equal_keys_in_order(
            keys in proptest::collection::vec(0u64..8, 0..3000),
            shift in 0u32..61,
        ) {
            check(tagged(keys.into_iter().map(|k| k << shift).collect()));
        }

        #[test]
        fn sorts_keys_with_scattered_varying_bits(
            keys in proptest::collection::vec((0u64..300, 0u64..5000, 0u64..40), 0..3000),
        ) {
            check(tagged(keys.into_iter().map(|(a, b, c)| (a << 56) | (b << 24) | (c << 3)).collect()));
        }
    }

    #[test]
    fn digits_skip_the_bits_every_key_shares() {
        assert_eq!(digit_shifts(0), Vec::<u32>::new());
        assert_eq!(digit_shifts(1), vec![0]);
        assert_eq!(digit_shifts(0b1 << 40), vec![40]);
        // Bits 0-12 and 48-55: two digits for the low run, one for the high.
        assert_eq!(digit_shifts(0x1fff | (0xff << 48)), vec![0, 12, 48]);
        assert_eq!(digit_shifts(u64::MAX), vec![0, 12, 24, 36, 48, 60]);
    }

    #[test]
    fn identical_keys_leave_the_order_alone() {
        check(tagged(vec![7; 1000]));
    }
}
