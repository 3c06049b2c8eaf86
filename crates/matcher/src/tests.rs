//! The matcher must recover the transform it is given, from noisy hits among chance ones.

use super::*;

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// A planted sample: reference `track` segment `r0..r1` (frames) placed at query frame
/// `q0`, played at `tempo` (reference seconds per query second), shifted by `pitch_bins`,
/// seen through `n` hits.
#[derive(Clone, Copy)]
struct Planted {
    track: u32,
    r0: f64,
    r1: f64,
    q0: f64,
    tempo: f64,
    pitch_bins: f64,
    n: usize,
}

/// Hits with the query quads they index, the reference side rounded to the store's fixed
/// point as the engine receives it.
#[derive(Default)]
struct Hits {
    hits: Vec<Hit>,
    query: Vec<QueryQuad>,
}

impl Hits {
    /// Adds a hit of `track` from query (time, bin, span) to reference (time, bin, span).
    fn push(&mut self, track: u32, q: [f64; 3], r: [f64; 3]) {
        self.hits.push(Hit {
            track,
            query: self.query.len() as u32,
            r_time: r[0].round() as u32,
            r_bin: (r[1] * REF_BIN_SCALE as f64).round() as u16,
            r_span: (r[2] * REF_SPAN_SCALE as f64).round() as u16,
        });
        self.query.push(QueryQuad {
            time: q[0] as f32,
            bin: q[1] as f32,
            span: q[2] as f32,
        });
    }

    fn find_matches(self, p: &MatchParams) -> Vec<SampleMatch> {
        find_matches(self.hits, &self.query, p)
    }
}

fn sample_hits(rng: &mut Lcg, s: Planted, out: &mut Hits) {
    let Planted {
        track,
        r0,
        r1,
        q0,
        tempo,
        pitch_bins,
        n,
    } = s;
    for _ in 0..n {
        let r = rng.range(r0, r1);
        let r_span = rng.range(10.0, 90.0);
        let r_bin = rng.range(20.0, 170.0);
        // Peak positions jitter by about half a frame and a third of a bin.
        let q = q0 + (r - r0) / tempo + rng.range(-0.7, 0.7);
        let q_span = r_span / tempo + rng.range(-0.7, 0.7);
        let q_bin = r_bin + pitch_bins + rng.range(-0.3, 0.3);
        out.push(track, [q, q_bin, q_span], [r, r_bin, r_span]);
    }
}

/// Chance hits: every field independent and uniform.
fn noise_hits(rng: &mut Lcg, n_tracks: u32, n: usize, q_len: f64, r_len: f64, out: &mut Hits) {
    for _ in 0..n {
        let track = (rng.next_f64() * n_tracks as f64) as u32;
        let q = [
            rng.range(0.0, q_len),
            rng.range(0.0, 198.0),
            rng.range(2.0, 200.0),
        ];
        let r = [
            rng.range(0.0, r_len),
            rng.range(0.0, 198.0),
            rng.range(3.0, 100.0),
        ];
        out.push(track, q, r);
    }
}

#[test]
fn recovers_offset_tempo_and_pitch_among_noise() {
    let p = MatchParams::default();
    for (seed, tempo, pitch_bins) in [
        (1u64, 1.0, 0.0),
        (2, 0.7, -18.5),
        (3, 1.4, 17.4),
        (4, 0.85, 0.0),
        (5, 1.0, 9.0),
        (6, 0.5, -36.0),
        (7, 2.0, 36.0),
    ] {
        let mut rng = Lcg(seed);
        // An 8 s (1000-frame) excerpt from 60 s into track 7, placed 12 s into the query.
        let planted = Planted {
            track: 7,
            r0: 7500.0,
            r1: 8500.0,
            q0: 1500.0,
            tempo,
            pitch_bins,
            n: 40,
        };
        let mut hits = Hits::default();
        sample_hits(&mut rng, planted, &mut hits);
        noise_hits(&mut rng, 50, 50_000, 5000.0, 30_000.0, &mut hits);
        let found = hits.find_matches(&p);
        assert!(!found.is_empty(), "tempo {tempo}: nothing found");
        let m = &found[0];
        assert_eq!(m.track, 7);
        assert!(
            (m.tempo / tempo - 1.0).abs() < 0.01,
            "tempo {} vs {tempo}",
            m.tempo
        );
        let st = pitch_bins / 3.0;
        assert!(
            (m.pitch_semitones - st).abs() < 0.2,
            "pitch {} vs {st}",
            m.pitch_semitones
        );
        let o = &m.occurrences[0];
        assert!(
            (o.query_start_s - 12.0).abs() < 0.3,
            "start {}",
            o.query_start_s
        );
        assert!(
            (o.ref_start_s - 60.0).abs() < 0.3,
            "ref start {}",
            o.ref_start_s
        );
    }
}

/// With the slope fitted over runs of hits (`slope_run_gap_frames`, off by default), two
/// chance hits far apart in the reference whose intercepts agree do not set the tempo of
/// a real sample at the same transform (a least-squares pair weighs with the square of
/// its distance): the case of a benchmark query whose 8 s sample was fitted 1.4% off and
/// then failed verification.
#[test]
fn a_distant_chance_pair_does_not_tilt_the_tempo() {
    let p = MatchParams::default();
    let mut rng = Lcg(11);
    let mut hits = Hits::default();
    // A weak sample: 12 hits over 3.2 s from 384 s into track 3, at tempo 1 and pitch 0.
    let planted = Planted {
        track: 3,
        r0: 48_000.0,
        r1: 48_400.0,
        q0: 3_400.0,
        tempo: 1.0,
        pitch_bins: 0.0,
        n: 12,
    };
    sample_hits(&mut rng, planted, &mut hits);
    // Chance hits scattered over the track whose span ratios say 0.984: they pull the
    // first, median estimate of the slope there...
    for _ in 0..40 {
        let (q, r) = (rng.range(0.0, 5000.0), rng.range(0.0, 60_000.0));
        hits.push(3, [q, 80.0, 0.984 * 40.0], [r, 80.0, 40.0]);
    }
    // ...at which a chance cluster lines up: hits at two places 27 s apart in the
    // reference whose line has slope 0.985.
    for (q, r) in [(1560.0, 34_428.0), (1560.0, 34_428.0), (4951.4, 37_871.0)] {
        hits.push(3, [q, 80.0, 40.0], [r, 80.0, 40.0]);
    }
    let found = hits.find_matches(&MatchParams {
        min_significance: 0.0,
        slope_run_gap_frames: 1000.0,
        ..p
    });
    let m = found
        .iter()
        .find(|m| m.track == 3)
        .expect("the sample is found");
    assert!((m.tempo - 1.0).abs() < 0.005, "tempo {}", m.tempo);
}

/// Sharded hits are matched exactly as one vector holding each track's hits in shard
/// order.
#[test]
fn sharded_hits_match_as_one_vector() {
    let p = MatchParams::default();
    let mut rng = Lcg(11);
    let mut hits = Hits::default();
    for (track, tempo, pitch_bins) in [(3u32, 0.8, -12.0), (7, 1.25, 4.0), (20, 1.0, 0.0)] {
        let planted = Planted {
            track,
            r0: 2000.0,
            r1: 3000.0,
            q0: 700.0 * f64::from(track % 5),
            tempo,
            pitch_bins,
            n: 40,
        };
        sample_hits(&mut rng, planted, &mut hits);
    }
    noise_hits(&mut rng, 30, 30_000, 5000.0, 30_000.0, &mut hits);
    let Hits { hits, query } = hits;
    for n_shards in [2usize, 5] {
        // Hit j goes to shard j mod n, so every track, and every planted sample, is spread
        // over all shards.
        let mut shards: Vec<Vec<Hit>> = vec![Vec::new(); n_shards];
        for (j, h) in hits.iter().enumerate() {
            shards[j % n_shards].push(*h);
        }
        // Shuffled within each shard: a track's hits are matched in an order of their own
        // content, so neither the sharding nor the order of arrival may change a bit.
        for shard in &mut shards {
            shard.reverse();
        }
        let mut tracks: Vec<u32> = hits.iter().map(|h| h.track).collect();
        tracks.sort_unstable();
        tracks.dedup();
        let one: Vec<Hit> = tracks
            .iter()
            .flat_map(|&t| shards.iter().flatten().filter(move |h| h.track == t))
            .copied()
            .collect();
        let expected = find_matches(one, &query, &p);
        assert_eq!(
            expected.iter().map(|m| m.track).collect::<Vec<_>>(),
            [3, 20, 7],
            "{n_shards} shards"
        );
        assert_eq!(find_matches_sharded(shards, &query, &p), expected);
    }
}

#[test]
fn chance_hits_alone_match_nothing() {
    let p = MatchParams::default();
    for seed in 10..15 {
        let mut rng = Lcg(seed);
        let mut hits = Hits::default();
        noise_hits(&mut rng, 20, 200_000, 22_500.0, 30_000.0, &mut hits);
        let found = hits.find_matches(&p);
        assert!(
            found.is_empty(),
            "seed {seed}: spurious {:?}",
            found.first()
        );
    }
}

#[test]
fn loop_repetitions_are_one_match_with_many_occurrences() {
    let p = MatchParams::default();
    let mut rng = Lcg(42);
    // A 2 s (250-frame) segment slowed to 0.9, looped 8 times back to back, with only 5
    // hits per repetition: too few alone, enough together.
    let tempo = 0.9;
    let period = 250.0 / tempo;
    let mut hits = Hits::default();
    for k in 0..8 {
        let planted = Planted {
            track: 3,
            r0: 2000.0,
            r1: 2250.0,
            q0: 800.0 + k as f64 * period,
            tempo,
            pitch_bins: -5.0,
            n: 5,
        };
        sample_hits(&mut rng, planted, &mut hits);
    }
    noise_hits(&mut rng, 30, 30_000, 5000.0, 30_000.0, &mut hits);
    let found = hits.find_matches(&p);
    assert!(!found.is_empty());
    let m = &found[0];
    assert_eq!(m.track, 3);
    assert!(
        m.occurrences.len() >= 6,
        "{} occurrences",
        m.occurrences.len()
    );
    assert!((m.tempo / tempo - 1.0).abs() < 0.01, "tempo {}", m.tempo);
}

#[test]
fn neighbourhood_sums_equal_a_search_per_neighbour() {
    let mut rng = Lcg(77);
    let key =
        |i: u64, j: u64, k: u64| ((i + 1) << (2 * AXIS_BITS)) | ((j + 1) << AXIS_BITS) | (k + 1);
    for _ in 0..20 {
        // Dense little grids, so neighbourhoods overlap and reach every border.
        let mut cells: Vec<(u64, u32)> = (0..300)
            .map(|_| {
                let (i, j, k) = (
                    rng.range(0.0, 6.0),
                    rng.range(0.0, 6.0),
                    rng.range(0.0, 8.0),
                );
                (
                    key(i as u64, j as u64, k as u64),
                    rng.range(1.0, 4.0) as u32,
                )
            })
            .collect();
        cells.sort_unstable();
        cells.dedup_by_key(|c| c.0);
        let count = |k: u64| {
            cells
                .binary_search_by_key(&k, |c| c.0)
                .map_or(0, |i| cells[i].1)
        };
        let expected: Vec<(u32, u64)> = cells
            .iter()
            .filter(|c| c.1 >= 2)
            .map(|&(k, _)| {
                let mut sum = 0;
                for di in 0..3u64 {
                    for dj in 0..3u64 {
                        for dk in 0..3u64 {
                            sum += count(
                                k + di * (1 << (2 * AXIS_BITS)) + dj * (1 << AXIS_BITS) + dk
                                    - (1 << (2 * AXIS_BITS))
                                    - (1 << AXIS_BITS)
                                    - 1,
                            );
                        }
                    }
                }
                (sum, k)
            })
            .collect();
        assert_eq!(
            neighbourhood_sums(&cells, 1 << (2 * AXIS_BITS), 1 << AXIS_BITS).collect::<Vec<_>>(),
            expected
        );
    }
}

mod verification {
    use super::Lcg;
    use crate::verify::{Line, NULL_SHIFTS_FRAMES, PeakGrid, VerifyParams, verify_line};

    const N_BINS: usize = 198;

    /// Random reference peaks, 24 a second (125 frames), sorted by time.
    fn reference_peaks(rng: &mut Lcg, frames: f64) -> Vec<(f32, f32)> {
        let n = (frames / 125.0 * 24.0) as usize;
        let mut peaks: Vec<(f32, f32)> = (0..n)
            .map(|_| {
                (
                    rng.range(0.0, frames) as f32,
                    rng.range(5.0, N_BINS as f64 - 20.0) as f32,
                )
            })
            .collect();
        peaks.sort_by(|a, b| a.0.total_cmp(&b.0));
        peaks
    }

    /// Reference peaks, the line they are planted along, the planted reference frames
    /// `r0..r1`, and the share of peaks that survive.
    type Planted<'a> = (&'a [(f32, f32)], Line, f64, f64, f64);

    /// A query of `frames` frames holding dense random peaks (`density` per frame), plus
    /// the images of the reference peaks in `r0..r1` under `line`, each kept with
    /// probability `survival` and jittered by up to one frame and half a bin.
    fn query_grid(
        rng: &mut Lcg,
        frames: usize,
        density: f64,
        planted: Option<Planted<'_>>,
    ) -> PeakGrid {
        let mut peaks: Vec<(f32, f32)> = (0..(frames as f64 * density) as usize)
            .map(|_| {
                (
                    rng.range(0.0, frames as f64) as f32,
                    rng.range(0.0, N_BINS as f64) as f32,
                )
            })
            .collect();
        if let Some((reference, line, r0, r1, survival)) = planted {
            for &(rt, rb) in reference {
                let rt = rt as f64;
                if rt < r0 || rt > r1 || rng.next_f64() > survival {
                    continue;
                }
                let qt = line.q0 + (rt - line.r0) / line.tempo + rng.range(-1.0, 1.0);
                let qb = rb as f64 + line.shift_bins + rng.range(-0.5, 0.5);
                peaks.push((qt as f32, qb as f32));
            }
        }
        PeakGrid::new(&peaks, frames, N_BINS, 2, 1)
    }

    /// 8 s of a random reference (1000 query frames from reference frame 9000) planted
    /// at query frame 2000 under `tempo` and `shift`; half of its peaks survive, among 1.2
    /// dense query peaks per frame. Returns the reference, the true line, the last planted
    /// reference frame and the query's grid.
    fn planted_excerpt(
        rng: &mut Lcg,
        tempo: f64,
        shift: f64,
    ) -> (Vec<(f32, f32)>, Line, f64, PeakGrid) {
        let reference = reference_peaks(rng, 20_000.0);
        let line = Line {
            tempo,
            r0: 9_000.0,
            q0: 2_000.0,
            shift_bins: shift,
        };
        let r1 = 9_000.0 + 1_000.0 * tempo;
        let grid = query_grid(rng, 5_000, 1.2, Some((&reference, line, 9_000.0, r1, 0.5)));
        (reference, line, r1, grid)
    }

    #[test]
    fn grid_marks_the_tolerance_box_only() {
        let grid = PeakGrid::new(&[(10.0, 100.0)], 50, N_BINS, 2, 1);
        assert!(grid.get(10.0, 100.0) && grid.get(12.0, 101.0) && grid.get(8.0, 99.0));
        assert!(!grid.get(13.0, 100.0) && !grid.get(10.0, 102.0) && !grid.get(7.0, 100.0));
        assert!(!grid.get(-1.0, 100.0) && !grid.get(60.0, 100.0) && !grid.get(10.0, 500.0));
        assert!(!grid.get(f32::NAN, 100.0));
    }

    #[test]
    fn a_masked_sample_is_confirmed_where_it_sits() {
        let p = VerifyParams::default();
        for (seed, tempo, shift) in [(1u64, 0.8, -11.0), (2, 1.0, 0.0), (3, 1.37, 16.0)] {
            let mut rng = Lcg(seed);
            let (reference, line, r1, grid) = planted_excerpt(&mut rng, tempo, shift);
            // The candidate's intercept is off by three frames and its pitch by one bin.
            let guess = Line {
                q0: line.q0 + 3.0,
                shift_bins: line.shift_bins + 1.0,
                ..line
            };
            let v = verify_line(guess, &reference, &grid, &p).expect("verified");
            assert!(v.llr > 60.0, "seed {seed}: llr {}", v.llr);
            assert!(
                (v.r_start - 9_000.0).abs() < 60.0 && (v.r_end - r1).abs() < 60.0,
                "seed {seed}: stretch {}..{} vs 9000..{r1}",
                v.r_start,
                v.r_end
            );
            assert_eq!(v.line.shift_bins, line.shift_bins, "pitch refined");
        }
    }

    #[test]
    fn a_slope_off_by_a_percent_is_refined() {
        // A candidate fitted from a few sparse hits may have its tempo 1-2% off: over an
        // 8 s sample that moves the far end by 10-20 frames, far beyond the tolerance, so
        // without refining the tempo only a short stretch verifies.
        let p = VerifyParams {
            refine_tempo: 0.02,
            ..VerifyParams::default()
        };
        let no_tempo = VerifyParams::default();
        for (seed, tempo, error) in [(4u64, 1.0, 0.014), (5, 0.8, -0.016), (6, 1.25, 0.012)] {
            let mut rng = Lcg(seed);
            let (reference, line, r1, grid) = planted_excerpt(&mut rng, tempo, 0.0);
            let guess = Line {
                tempo: tempo * (1.0 + error),
                ..line
            };
            let v = verify_line(guess, &reference, &grid, &p).expect("verified");
            let unrefined = verify_line(guess, &reference, &grid, &no_tempo).map_or(0.0, |v| v.llr);
            assert!(
                (v.line.tempo / tempo - 1.0).abs() < 0.004,
                "seed {seed}: tempo {} vs {tempo}",
                v.line.tempo
            );
            assert!(
                v.llr > 60.0 && v.llr > unrefined + 20.0,
                "seed {seed}: llr {} (without tempo refinement {unrefined})",
                v.llr
            );
            assert!(
                (v.r_start - 9_000.0).abs() < 60.0 && (v.r_end - r1).abs() < 60.0,
                "seed {seed}: stretch {}..{} vs 9000..{r1}",
                v.r_start,
                v.r_end
            );
        }
    }

    /// Two recordings in one tempo: the reference's peaks sit on its beats (every 0.5 s),
    /// and the query has a broadband hit on each of its beats at the same period. A line
    /// that puts one's beats on the other's matches most peaks, while the control spots
    /// between beats stay quiet, so the line alone scores far above any threshold; the
    /// same line a beat or a few away scores as high, and null lines take it off.
    #[test]
    fn beats_that_line_up_are_not_a_sample() {
        const BEAT: f64 = 62.5;
        let mut rng = Lcg(77);
        let mut reference: Vec<(f32, f32)> = Vec::new();
        for k in 0..320 {
            for _ in 0..6 {
                let t = k as f64 * BEAT + rng.range(-0.5, 0.5);
                reference.push((t as f32, rng.range(5.0, N_BINS as f64 - 20.0) as f32));
            }
        }
        reference.sort_by(|a, b| a.0.total_cmp(&b.0));
        let frames = 5_000usize;
        let mut peaks: Vec<(f32, f32)> = (0..(frames as f64 * 0.6) as usize)
            .map(|_| {
                (
                    rng.range(0.0, frames as f64) as f32,
                    rng.range(0.0, N_BINS as f64) as f32,
                )
            })
            .collect();
        for k in 0..(frames as f64 / BEAT) as usize {
            for _ in 0..60 {
                let t = 10.0 + k as f64 * BEAT + rng.range(-1.0, 1.0);
                peaks.push((t as f32, rng.range(0.0, N_BINS as f64) as f32));
            }
        }
        let grid = PeakGrid::new(&peaks, frames, N_BINS, 2, 1);
        // Reference beat 40 on query beat 16.
        let line = Line {
            tempo: 1.0,
            r0: 40.0 * BEAT,
            q0: 10.0 + 16.0 * BEAT,
            shift_bins: 0.0,
        };
        let with_null = VerifyParams {
            null_shifts_frames: NULL_SHIFTS_FRAMES.to_vec(),
            ..VerifyParams::default()
        };
        let without_null = VerifyParams {
            null_shifts_frames: Vec::new(),
            ..VerifyParams::default()
        };
        let raw = verify_line(line, &reference, &grid, &without_null).map_or(0.0, |v| v.llr);
        assert!(raw > crate::verify::VERIFICATION_MIDPOINT, "raw {raw}");
        let net = verify_line(line, &reference, &grid, &with_null).map_or(0.0, |v| v.llr);
        assert!(
            net < crate::verify::VERIFICATION_MIDPOINT / 2.0,
            "net {net} (raw {raw})"
        );
    }

    /// A 3 s excerpt looped four times: the null line moved by one loop (3 s, one of the
    /// null shifts) lands on the next repetition and scores as high as the true line, so
    /// a verification that took it off would lose the loop. The match knows its own loop
    /// period from its occurrences and skips the null shifts at multiples of it.
    #[test]
    fn a_loop_keeps_its_score_when_a_null_shift_equals_its_period() {
        use crate::{MatchParams, Occurrence, SampleMatch};
        const PERIOD: f64 = 375.0;
        let mut rng = Lcg(5);
        let reference = reference_peaks(&mut rng, 20_000.0);
        let (r0, q0, frames) = (9_000.0, 1_000.0, 4_000usize);
        let mut peaks: Vec<(f32, f32)> = (0..(frames as f64 * 1.2) as usize)
            .map(|_| {
                (
                    rng.range(0.0, frames as f64) as f32,
                    rng.range(0.0, N_BINS as f64) as f32,
                )
            })
            .collect();
        for k in 0..4 {
            for &(rt, rb) in &reference {
                let rt = rt as f64;
                if rt < r0 || rt >= r0 + PERIOD || rng.next_f64() > 0.9 {
                    continue;
                }
                let qt = q0 + k as f64 * PERIOD + (rt - r0) + rng.range(-1.0, 1.0);
                peaks.push((qt as f32, (rb as f64 + rng.range(-0.5, 0.5)) as f32));
            }
        }
        let grid = PeakGrid::new(&peaks, frames, N_BINS, 2, 1);
        let p = MatchParams::default();
        assert!(
            p.verify.null_shifts_frames.contains(&PERIOD),
            "the default null shifts include the loop's period"
        );
        let frame_s = p.frame_s;
        let occurrence = |k: usize| Occurrence {
            query_start_s: (q0 + k as f64 * PERIOD) * frame_s,
            query_end_s: (q0 + (k + 1) as f64 * PERIOD) * frame_s,
            ref_start_s: r0 * frame_s,
            ref_end_s: (r0 + PERIOD) * frame_s,
            hits: 4,
        };
        let mut m = SampleMatch {
            track: 0,
            tempo: 1.0,
            pitch_semitones: 0.0,
            occurrences: (0..4).map(occurrence).collect(),
            hits: 16,
            significance: 10.0,
            verification: 0.0,
            verified: false,
            weak_seed: false,
        };
        crate::verify::verify_match(&mut m, &reference, &grid, &p);
        // One repetition, lined up on its own, and the same with every null line.
        let line = Line {
            tempo: 1.0,
            r0,
            q0,
            shift_bins: 0.0,
        };
        let window: Vec<(f32, f32)> = reference
            .iter()
            .copied()
            .filter(|&(t, _)| (r0 - 2_000.0..r0 + 2_000.0).contains(&(t as f64)))
            .collect();
        let all_nulls = verify_line(line, &window, &grid, &p.verify).map_or(0.0, |v| v.llr);
        let no_nulls = VerifyParams {
            null_shifts_frames: Vec::new(),
            ..p.verify.clone()
        };
        let raw = verify_line(line, &window, &grid, &no_nulls).map_or(0.0, |v| v.llr);
        assert!(raw > p.min_verification, "raw {raw}");
        assert!(
            all_nulls < p.min_verification / 2.0,
            "with every null line {all_nulls}"
        );
        assert!(
            m.verification > p.min_verification,
            "loop-aware {}",
            m.verification
        );
    }

    /// The screen of weak candidates (`VerifyParams::screen_nats`) lets a weak true
    /// sample through, to the same verification as without it, and turns chance lines
    /// away before their full verification, which would not have accepted them either.
    #[test]
    fn the_screen_passes_weak_samples_and_stops_chance() {
        use crate::{MatchParams, SampleMatch};
        let p = MatchParams::default();
        assert!(p.verify.screen_nats > 0.0, "the screen is on by default");
        let unscreened = MatchParams {
            verify: VerifyParams {
                screen_nats: 0.0,
                ..p.verify.clone()
            },
            ..p.clone()
        };
        // A candidate on `line` over `len` reference frames, too weak for its hits alone.
        let candidate = |line: Line, len: f64| candidate_on(line, len, 4, 1.0);
        let both = |m: &SampleMatch, reference: &[(f32, f32)], grid: &PeakGrid| {
            let (mut a, mut b) = (m.clone(), m.clone());
            crate::verify::verify_match(&mut a, reference, grid, &p);
            crate::verify::verify_match(&mut b, reference, grid, &unscreened);
            (a.verification, b.verification)
        };
        for seed in 0..5u64 {
            let mut rng = Lcg(100 + seed);
            let (reference, line, _, grid) = planted_excerpt(&mut rng, 0.8, -5.0);
            // A line from a few hits: two frames off, and over a third of the sample.
            let off = Line {
                q0: line.q0 + 2.0,
                ..line
            };
            let (screened, full) = both(&candidate(off, 300.0), &reference, &grid);
            assert!(full > p.min_verification, "the sample verifies at {full}");
            assert_eq!(screened, full, "seed {seed}");
        }
        let mut stopped = 0;
        for seed in 10..40u64 {
            let (reference, grid, line) = chance_line(seed);
            let (screened, full) = both(&candidate(line, 300.0), &reference, &grid);
            assert!(full < p.min_verification, "chance verified at {full}");
            assert!(screened == 0.0 || screened == full, "seed {seed}");
            stopped += usize::from(screened == 0.0 && full > 0.0);
        }
        assert!(
            stopped >= 8,
            "the screen stopped {stopped} chance lines of 30"
        );
    }

    /// A weak candidate whose hits fell in two short clusters has its slope from them a
    /// couple of percent off; the tempo from its first occurrence's start to its last
    /// one's end is verified too, and finds the sample that the fitted slope misses.
    #[test]
    fn a_weak_split_candidate_is_verified_at_its_long_baseline_tempo() {
        use crate::{MatchParams, SampleMatch};
        let p = MatchParams::default();
        let tempo = 1.25;
        let mut rng = Lcg(7);
        let (reference, line, _, grid) = planted_excerpt(&mut rng, tempo, 4.0);
        let at = |r0: f64, r1: f64| occurrence_on(line, r0, r1, 6);
        let tilted = SampleMatch {
            track: 0,
            tempo: tempo * 1.025,
            pitch_semitones: 4.0 / p.bins_per_semitone,
            occurrences: vec![at(9_000.0, 9_150.0), at(10_000.0, 10_150.0)],
            hits: 12,
            significance: 20.0,
            verification: 0.0,
            verified: false,
            weak_seed: false,
        };
        let mut split = tilted.clone();
        crate::verify::verify_match(&mut split, &reference, &grid, &p);
        assert!(
            split.verification > p.min_verification,
            "verified at {}",
            split.verification
        );
        assert!(
            (split.tempo / tempo - 1.0).abs() < 0.005,
            "tempo {}",
            split.tempo
        );
        // One of its occurrences alone has no baseline, and the tilted slope fails.
        let mut alone = SampleMatch {
            occurrences: vec![tilted.occurrences[1].clone()],
            ..tilted
        };
        crate::verify::verify_match(&mut alone, &reference, &grid, &p);
        assert!(
            alone.verification < p.min_verification,
            "the tilted line alone verified at {}",
            alone.verification
        );
    }

    /// A candidate whose hits put it at the wrong place of its reference (a repetitive
    /// reference's other bar) fails on its own line; its place is searched anew at its
    /// transform and found, and the occurrence moves there. Without the search it fails,
    /// and the search confirms no chance candidate.
    #[test]
    fn a_candidate_at_the_wrong_place_is_relocated() {
        use crate::MatchParams;
        let p = MatchParams::default();
        assert!(
            p.verify.relocate_from <= 10.0,
            "the search is on by default"
        );
        let fixed = MatchParams {
            verify: VerifyParams {
                relocate_from: f64::INFINITY,
                ..p.verify.clone()
            },
            ..p.clone()
        };
        let candidate = |line: Line, significance: f64| candidate_on(line, 400.0, 6, significance);
        for (seed, tempo, shift) in [(21u64, 0.9, -5.0), (22, 1.0, 0.0), (23, 1.3, 12.0)] {
            let mut rng = Lcg(seed);
            let (reference, line, _, grid) = planted_excerpt(&mut rng, tempo, shift);
            // The same query stretch, 3,000 reference frames (24 s) early.
            let wrong = Line {
                r0: line.r0 - 3_000.0,
                ..line
            };
            let mut stuck = candidate(wrong, 12.0);
            crate::verify::verify_match(&mut stuck, &reference, &grid, &fixed);
            assert!(
                stuck.verification < p.min_verification,
                "seed {seed}: the wrong place verified at {}",
                stuck.verification
            );
            let mut moved = candidate(wrong, 12.0);
            crate::verify::verify_match(&mut moved, &reference, &grid, &p);
            assert!(
                moved.verification > p.min_verification,
                "seed {seed}: relocated to {}",
                moved.verification
            );
            let o = &moved.occurrences[0];
            // The planted excerpt is reference frames 9,000 on, at query frame 2,000 (a
            // stretch may begin with a chance peak or two just before it).
            let (r, q) = (o.ref_start_s / p.frame_s, o.query_start_s / p.frame_s);
            assert!(
                (8_950.0..9_000.0 + 1_000.0 * tempo).contains(&r),
                "seed {seed}: reference frame {r}"
            );
            assert!(
                (line.q0 + (r - line.r0) / tempo - q).abs() <= 4.0,
                "seed {seed}: query frame {q} off the true line"
            );
            // Too weak a candidate is not searched.
            let mut weak = candidate(wrong, p.verify.relocate_from / 2.0);
            crate::verify::verify_match(&mut weak, &reference, &grid, &p);
            assert!(weak.verification < p.min_verification, "seed {seed}");
        }
        // A damaged peak list with a peak ages away is not searched (its votes would
        // take petabytes), and the candidate is left as it was.
        let mut rng = Lcg(24);
        let (mut reference, line, _, grid) = planted_excerpt(&mut rng, 1.0, 0.0);
        reference.push((1.0e15, 50.0));
        let mut far = candidate(
            Line {
                r0: line.r0 - 3_000.0,
                ..line
            },
            12.0,
        );
        crate::verify::verify_match(&mut far, &reference, &grid, &p);
        assert!(far.verification < p.min_verification);
        for seed in 50..80u64 {
            let (reference, grid, line) = chance_line(seed);
            let mut m = candidate(line, 12.0);
            crate::verify::verify_match(&mut m, &reference, &grid, &p);
            assert!(
                m.verification < p.min_verification,
                "seed {seed}: chance relocated to {}",
                m.verification
            );
        }
    }

    /// An unverified candidate on `line` over `len` reference frames from its `r0`, with
    /// `hits` hits and `significance`.
    fn candidate_on(line: Line, len: f64, hits: usize, significance: f64) -> crate::SampleMatch {
        crate::SampleMatch {
            track: 0,
            tempo: line.tempo,
            pitch_semitones: line.shift_bins / crate::MatchParams::default().bins_per_semitone,
            occurrences: vec![occurrence_on(line, line.r0, line.r0 + len, hits)],
            hits,
            significance,
            verification: 0.0,
            verified: false,
            weak_seed: false,
        }
    }

    /// The occurrence of reference frames `r0..r1` on `line`, with `hits` hits.
    fn occurrence_on(line: Line, r0: f64, r1: f64, hits: usize) -> crate::Occurrence {
        let frame_s = crate::MatchParams::default().frame_s;
        let q = |r: f64| (line.q0 + (r - line.r0) / line.tempo) * frame_s;
        crate::Occurrence {
            query_start_s: q(r0),
            query_end_s: q(r1),
            ref_start_s: r0 * frame_s,
            ref_end_s: r1 * frame_s,
            hits,
        }
    }

    /// A random reference, a query of random peaks that holds none of it, and a random
    /// line between them (from `seed`).
    fn chance_line(seed: u64) -> (Vec<(f32, f32)>, PeakGrid, Line) {
        let mut rng = Lcg(seed);
        let reference = reference_peaks(&mut rng, 20_000.0);
        let grid = query_grid(&mut rng, 5_000, 1.2, None);
        let line = Line {
            tempo: rng.range(0.7, 1.4),
            r0: rng.range(0.0, 15_000.0),
            q0: rng.range(0.0, 4_000.0),
            shift_bins: rng.range(-20.0, 20.0).round(),
        };
        (reference, grid, line)
    }

    #[test]
    fn unrelated_lines_score_low() {
        let p = VerifyParams::default();
        let mut worst = 0.0f64;
        for seed in 10..40u64 {
            let (reference, grid, line) = chance_line(seed);
            if let Some(v) = verify_line(line, &reference, &grid, &p) {
                worst = worst.max(v.llr);
            }
        }
        assert!(
            worst < crate::verify::VERIFICATION_MIDPOINT / 2.0,
            "chance reached {worst}"
        );
    }
}

/// Intercept seeds (`seed_intercept_frames`, off by default): when more than
/// `max_cells_per_track` chance groups share a transform and a reference block, the vote on
/// (time factor, pitch, block) alone fills its cells with them and a weak sample is never
/// fitted; asking the hits to agree also on where the block sits in the query finds it.
#[test]
fn intercept_seeds_find_a_weak_sample_among_crowded_cells() {
    let mut rng = Lcg(21);
    let mut hits = Hits::default();
    // A weak sample: 16 hits over 4 s from 100 s into track 5, slowed to 0.8 and 2 bins down.
    let planted = Planted {
        track: 5,
        r0: 12_500.0,
        r1: 13_000.0,
        q0: 2_000.0,
        tempo: 0.8,
        pitch_bins: -2.0,
        n: 16,
    };
    sample_hits(&mut rng, planted, &mut hits);
    // 60 crowded cells on the same track: 20 hits each at one transform and in one block,
    // at times in the query that share nothing.
    for _ in 0..60 {
        let factor = rng.range(0.5, 2.0);
        let pitch = rng.range(-30.0, 30.0);
        let block = rng.range(0.0, 200.0).floor() * 256.0;
        for _ in 0..20 {
            let r = block + rng.range(0.0, 255.0);
            let r_span = rng.range(10.0, 90.0);
            let r_bin = rng.range(40.0, 150.0);
            hits.push(
                5,
                [rng.range(0.0, 5000.0), r_bin + pitch, r_span * factor],
                [r, r_bin, r_span],
            );
        }
    }
    let p = MatchParams {
        min_significance: 0.0,
        seed_intercept_frames: 0.0,
        ..MatchParams::default()
    };
    let near_truth = |found: &[SampleMatch]| {
        found.iter().any(|m| {
            m.track == 5
                && (m.tempo - 0.8).abs() < 0.01
                && m.occurrences
                    .iter()
                    .any(|o| (o.query_start_s - 16.0).abs() < 0.5)
        })
    };
    let without = find_matches(hits.hits.clone(), &hits.query, &p);
    assert!(
        !near_truth(&without),
        "the crowded cells should hide the sample"
    );
    let seeded = MatchParams {
        seed_intercept_frames: 8.0,
        ..p
    };
    let with = find_matches(hits.hits, &hits.query, &seeded);
    assert!(
        near_truth(&with),
        "intercept seeds should find the sample: {with:?}"
    );
}

#[test]
fn a_weak_candidate_is_reported_on_its_peaks_only() {
    let p = MatchParams::default();
    let strong = SampleMatch {
        track: 0,
        tempo: 1.0,
        pitch_semitones: 0.0,
        occurrences: Vec::new(),
        hits: 83,
        significance: p.min_significance + 4.0,
        verification: p.min_hash_verification + 1.0,
        verified: true,
        weak_seed: false,
    };
    assert!(strong.is_accepted(&p));
    assert!(strong.stands_on_hits(&p));
    // The same hits from a weak candidate's seed: the transform was picked after the
    // hits were seen, so they carry nothing, verified or not.
    let weak = SampleMatch {
        weak_seed: true,
        ..strong.clone()
    };
    assert!(!weak.stands_on_hits(&p));
    assert!(!weak.is_accepted(&p));
    assert!(
        !SampleMatch {
            verified: false,
            verification: 0.0,
            ..weak.clone()
        }
        .is_accepted(&p)
    );
    assert!(weak.evidence(&p) < p.min_significance);
    // Its peaks can carry it, and then its score is theirs alone.
    let confirmed = SampleMatch {
        verification: p.min_verification + 5.0,
        ..weak
    };
    assert!(confirmed.is_accepted(&p));
    let mapped = p.min_significance + 5.0 * score::CONFIDENCE_WIDTH / verify::VERIFICATION_WIDTH;
    assert!((confirmed.evidence(&p) - mapped).abs() < 1e-9);
}

#[test]
fn a_hash_match_whose_peaks_say_nothing_is_not_reported() {
    let p = MatchParams::default();
    let m = SampleMatch {
        track: 0,
        tempo: 1.0,
        pitch_semitones: 0.0,
        occurrences: Vec::new(),
        hits: 200,
        significance: 2.0 * p.min_significance,
        verification: 0.0,
        verified: false,
        weak_seed: false,
    };
    // Unverified (a store without peak lists): the hits decide.
    assert!(m.is_accepted(&p));
    // Verified, and its line scores no better than the same line a beat away.
    let contradicted = SampleMatch {
        verification: p.min_hash_verification / 2.0,
        verified: true,
        ..m.clone()
    };
    assert!(!contradicted.is_accepted(&p));
    // Verified with some support from its peaks: the hits decide again.
    let supported = SampleMatch {
        verification: p.min_hash_verification,
        verified: true,
        ..m.clone()
    };
    assert!(supported.is_accepted(&p));
    // A loop (three separate replays of one reference moment) is exempt: its null lines
    // meet its own repetitions. Two overlapping pieces of one stretch are not a loop.
    let replay = |q: f64, r: f64| crate::Occurrence {
        query_start_s: q,
        query_end_s: q + 2.0,
        ref_start_s: r,
        ref_end_s: r + 2.0,
        hits: 4,
    };
    let looped = SampleMatch {
        occurrences: vec![
            replay(10.0, 300.0),
            replay(14.0, 300.2),
            replay(18.0, 299.9),
        ],
        ..contradicted.clone()
    };
    assert!(looped.is_accepted(&p));
    let not_looped = SampleMatch {
        occurrences: vec![
            replay(10.0, 300.0),
            replay(11.0, 300.2),
            replay(18.0, 290.0),
        ],
        ..contradicted.clone()
    };
    assert!(!not_looped.is_accepted(&p));
    // A weak candidate still needs the full verification.
    let weak = SampleMatch {
        significance: p.min_candidate_significance,
        ..supported
    };
    assert!(!weak.is_accepted(&p));
    assert!(
        SampleMatch {
            verification: p.min_verification,
            ..weak
        }
        .is_accepted(&p)
    );
}

#[test]
fn a_loop_stays_significant_however_often_it_repeats() {
    let p = MatchParams::default();
    // A short drum loop: every repetition hits the same 40 reference quads, so the
    // evidence (distinct reference quads) is 40 whether it plays 2 or 16 times.
    let mut rng = Lcg(7);
    let quads: Vec<[f64; 3]> = (0..40)
        .map(|_| {
            [
                rng.range(3000.0, 3240.0),
                rng.range(20.0, 170.0),
                rng.range(10.0, 90.0),
            ]
        })
        .collect();
    let period = 240.0;
    let mut significance = Vec::new();
    for repetitions in [2, 16] {
        let mut hits = Hits::default();
        for k in 0..repetitions {
            for r in &quads {
                let q = 500.0 + k as f64 * period + (r[0] - 3000.0) + rng.range(-0.7, 0.7);
                let q_span = r[2] + rng.range(-0.7, 0.7);
                hits.push(2, [q, r[1] + rng.range(-0.3, 0.3), q_span], *r);
            }
        }
        noise_hits(&mut rng, 30, 30_000, 5000.0, 30_000.0, &mut hits);
        let any = MatchParams {
            min_significance: 1.0,
            ..p.clone()
        };
        let found = hits.find_matches(&any);
        let m = found.iter().find(|m| m.track == 2);
        significance.push(m.map_or(0.0, |m| m.significance));
    }
    // More repetitions add chance places for the same evidence, so some fall is right;
    // the loop's own hits must not be taken for chance (that made it vanish).
    assert!(
        significance[1] >= 0.5 * significance[0] && significance[1] >= p.min_significance,
        "significance {significance:?}"
    );
}

/// The hits of a decoy line off the sampler's lines, 12 hits at tempo 1.3 and 9 bins up
/// (not a change of speed), and of a sample of five hits at tempo 0.8 and `pitch_bins`
/// within one seed block (256 frames), placed 16 s into the query; with the sample.
fn decoy_and_sample(rng: &mut Lcg, pitch_bins: f64) -> (Hits, Planted) {
    let mut hits = Hits::default();
    let decoy = Planted {
        track: 5,
        r0: 30_000.0,
        r1: 30_250.0,
        q0: 500.0,
        tempo: 1.3,
        pitch_bins: 9.0,
        n: 12,
    };
    sample_hits(rng, decoy, &mut hits);
    let sample = Planted {
        track: 5,
        r0: 12_554.0,
        r1: 12_790.0,
        q0: 2_000.0,
        tempo: 0.8,
        pitch_bins,
        n: 5,
    };
    sample_hits(rng, sample, &mut hits);
    (hits, sample)
}

/// Settings that examine one cell of usual strength (the decoy's) and up to
/// `weak_cells` weak ones, reporting every group.
fn one_cell_and_weak(weak_cells: usize) -> MatchParams {
    MatchParams {
        min_significance: 0.0,
        max_cells_per_track: 1,
        weak_cells_per_track: weak_cells,
        ..MatchParams::default()
    }
}

/// A decoy line off the sampler's lines that takes the one cell examined, and a sample of
/// five hits: found only as a weak candidate, and only on a line samplers use.
fn decoy_and_weak_sample(pitch_bins: f64, weak_cells: usize) -> bool {
    let mut rng = Lcg(5);
    let (hits, _) = decoy_and_sample(&mut rng, pitch_bins);
    find_matches(hits.hits, &hits.query, &one_cell_and_weak(weak_cells))
        .iter()
        .any(|m| {
            (m.tempo - 0.8).abs() < 0.02
                && m.occurrences
                    .iter()
                    .any(|o| (o.query_start_s - 16.0).abs() < 1.0)
        })
}

#[test]
fn a_weak_sample_on_a_samplers_line_is_a_candidate() {
    // Slowed to 0.8 as a turntable does: 3.86 semitones down.
    let speed = -36.0 * (1.0f64 / 0.8).log2();
    assert!(
        !decoy_and_weak_sample(speed, 0),
        "without weak candidates only the decoy's cell is examined"
    );
    assert!(
        decoy_and_weak_sample(speed, 4),
        "a weak candidate on the line of a speed change"
    );
    assert!(
        decoy_and_weak_sample(0.0, 4),
        "a weak candidate on the line of tempo alone"
    );
    assert!(
        !decoy_and_weak_sample(10.0, 4),
        "slowed and shifted up: on no sampler's line, so no weak candidate"
    );
}

/// A weak candidate gathers its transform's hits around its seed only: four hits on the
/// same transform 220 s further into the reference are not made another occurrence of it.
#[test]
fn a_weak_candidate_reaches_only_around_its_seed() {
    let mut rng = Lcg(7);
    let (mut hits, sample) = decoy_and_sample(&mut rng, 0.0);
    let far = Planted {
        r0: 40_000.0,
        r1: 40_200.0,
        q0: 3_000.0,
        n: 4,
        ..sample
    };
    sample_hits(&mut rng, far, &mut hits);
    let found = find_matches(hits.hits, &hits.query, &one_cell_and_weak(4));
    let m = found
        .iter()
        .find(|m| (m.tempo - 0.8).abs() < 0.02)
        .expect("the weak sample is a candidate");
    assert!(m.weak_seed);
    assert!(
        m.occurrences.iter().all(|o| o.ref_start_s < 120.0),
        "{:?}",
        m.occurrences
    );
}

#[test]
fn sampler_lines_are_speed_tempo_and_pitch() {
    let p = MatchParams::default();
    let lf = |tempo: f64| (1.0 / tempo).ln();
    let bins = |semitones: f64| semitones * p.bins_per_semitone;
    // Speed 0.8: the query is 1.25x as long and 3.86 semitones down.
    assert!(crate::on_sampler_line(lf(0.8), bins(-3.86), &p));
    assert!(crate::on_sampler_line(
        lf(1.4),
        bins(12.0 * 1.4f64.log2()),
        &p
    ));
    assert!(crate::on_sampler_line(lf(1.15), 0.0, &p), "tempo alone");
    assert!(crate::on_sampler_line(0.0, bins(-3.0), &p), "pitch alone");
    // Session 23's chance line: tempo 0.547 and 4.46 semitones up.
    assert!(!crate::on_sampler_line(lf(0.547), bins(4.46), &p));
    assert!(!crate::on_sampler_line(lf(0.8), bins(3.86), &p));
}

/// Winning hits back along a line reads only the blocks of the reference around each
/// cluster ([`ByBlock`]), and gives what a scan of every point gives, in the same order.
#[test]
fn winning_back_hits_by_block_matches_a_full_scan() {
    let p = MatchParams::default();
    let (slope, pitch) = (1.25f64, 4.0f32);
    let scan = |points: &[Point], mut clusters: Vec<Vec<usize>>| {
        let mut pitches: Vec<f64> = clusters
            .iter()
            .flatten()
            .map(|&i| points[i].pitch_bins())
            .collect();
        let pitch = median(&mut pitches);
        let mut member = vec![false; points.len()];
        clusters.iter().flatten().for_each(|&i| member[i] = true);
        for c in &mut clusters {
            let (b, lo, hi) = extension_of(points, c, slope);
            for (i, pt) in points.iter().enumerate() {
                if !member[i]
                    && (lo..=hi).contains(&pt.r())
                    && (pt.q() - slope * pt.r() - b).abs() <= p.inlier_frames
                    && (pt.pitch_bins() - pitch).abs() <= 1.5 * p.pitch_cell_bins
                    && (pt.log_factor - slope.ln()).abs() <= EXTEND_LOG_FACTOR
                {
                    member[i] = true;
                    c.push(i);
                }
            }
        }
        clusters
    };
    for (seed, r_len) in [(1u64, 40_000.0), (2, 400_000.0), (3, 3.0e9)] {
        let mut rng = Lcg(seed);
        let mut points = Vec::new();
        let mut clusters = vec![Vec::new(), Vec::new()];
        for k in 0..6000 {
            // Every third point on one of two lines (intercepts 100 and 900 frames) near
            // two places of the reference, the rest anywhere.
            let on = k % 3 == 0;
            let r = if on {
                [5_000.0, 20_000.0][k % 2] + rng.range(-600.0, 600.0)
            } else {
                rng.range(0.0, r_len)
            };
            let q = if on {
                [100.0, 900.0][k % 2] + slope * r + rng.range(-5.0, 5.0)
            } else {
                rng.range(0.0, 30_000.0)
            };
            let i = points.len();
            points.push(Point {
                log_factor: slope.ln() + rng.range(-0.15, 0.15),
                pitch_bins: pitch + rng.range(-2.0, 2.0) as f32,
                q: q as f32,
                r: r as f32,
                q_span: 30.0,
                r_span: 24.0,
            });
            if on && k % 7 == 0 {
                clusters[k % 2].push(i);
            }
        }
        let expected = scan(&points, clusters.clone());
        let by_block = ByBlock::new(&points, &Grid::new(&p));
        // Memory bounded by the points, however long the reference.
        assert!(
            by_block.starts.len() <= points.len() + 64 * by_block.n_pitch + 1,
            "seed {seed}"
        );
        let got = extend_along_lines(&points, &by_block, slope, clusters.clone(), &p);
        assert_eq!(got, expected, "seed {seed}");
        assert!(got[0].len() > clusters[0].len() && got[1].len() > clusters[1].len());
    }
}
