//! Audio fingerprints that survive speed change, time-stretching and pitch-shifting.
//!
//! The pipeline: mono samples at [`Params::sample_rate_hz`] -> log-frequency spectrogram
//! ([`spectrogram`]) -> spectral peaks ([`peaks`]) -> quad hashes ([`quads`]). This crate
//! knows nothing of files, storage or HTTP: it maps samples to numbers.
//!
//! The parameters that shape what a reference stores are part of the on-disk contract:
//! [`Params::describe`] renders them, and a store built with one description refuses to
//! be searched with another.

pub mod peak_list;
pub mod peaks;
pub mod quads;
pub mod spectrogram;

pub use peaks::{Peak, PeakPicker};
pub use quads::{FREQ_SCALE, QueryQuad, RefQuad, SPAN_SCALE, TIME_SCALE, whole_frames};
pub use spectrogram::{LogSpectrogram, SpectrogramBuilder, SpectrogramStream};

/// Version of the fingerprint algorithm; bump it whenever the same parameters would
/// produce different hashes or postings (3: times in 1/16 frame, spans as differences of
/// stored times).
pub const ALGORITHM_VERSION: u32 = 3;

/// Errors from building a [`Fingerprinter`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// A parameter is out of its valid range; the message names it. Fix the parameters.
    #[error("invalid fingerprint parameter: {0}")]
    InvalidParams(String),
}

/// Every tunable of the fingerprint. The defaults are the product's settings; see
/// BENCHMARKS.md for how they were chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Rate of the mono input signal.
    pub sample_rate_hz: u32,
    /// FFT length in samples (64 ms at 16 kHz: fine enough in frequency to resolve
    /// partials a third of a semitone apart above about 500 Hz).
    pub fft_size: usize,
    /// Hop between frames in samples (8 ms at 16 kHz, as Panako and Olaf use).
    pub hop: usize,
    /// Lowest frequency of the log axis.
    pub fmin_hz: f32,
    /// Log-frequency bins per octave (3 per semitone).
    pub bins_per_octave: u32,
    /// Octaves covered above `fmin_hz`.
    pub n_octaves: f32,
    /// A peak is the maximum of a (2r+1)-frame neighbourhood in time...
    pub peak_radius_frames: usize,
    /// ...and of a (2r+1)-bin neighbourhood in log-frequency.
    pub peak_radius_bins: usize,
    /// The query's peak neighbourhood in frames: smaller than the reference's, so a
    /// reference peak that a louder sound nearby in the mix no longer dominates is still a
    /// local maximum in the query.
    pub query_peak_radius_frames: usize,
    /// The query's peak neighbourhood in bins.
    pub query_peak_radius_bins: usize,
    /// Peaks quieter than this natural-log power are digital silence, not music (silence is
    /// -46 after the epsilon; a full-scale sine peaks near +11). Set low so that the floor
    /// relative to the loudest bin, not this one, decides for anything above about -70 dBFS,
    /// which keeps peak picking independent of gain.
    pub min_log_power: f32,
    /// Peaks more than this far (natural-log power) below the signal's loudest bin are
    /// ignored: a floor relative to the signal keeps peak picking independent of gain.
    pub dynamic_range_log: f32,
    /// Peak density is enforced per block of this many frames...
    pub density_block_frames: usize,
    /// ...and per this many equal sub-bands of the log-frequency axis.
    pub density_subbands: usize,
    /// Peaks per second kept for a reference.
    pub ref_peaks_per_s: f32,
    /// Peaks per second kept for a query (more, because other music competes for them).
    pub query_peaks_per_s: f32,
    /// Partner peaks of a reference quad lie at least this many frames after the anchor...
    pub quad_min_dt_frames: f32,
    /// ...and at most this many.
    pub quad_max_dt_frames: f32,
    /// Partner peaks may differ from the anchor by at most this many bins.
    pub quad_df_range_bins: f32,
    /// Quantisation step of the frequency differences in the hash.
    pub quad_df_step_bins: f32,
    /// Quantisation levels of each time ratio in the hash.
    pub quad_ratio_levels: u32,
    /// A reference anchor forms quads from its first this-many partners (C(n, 3) quads).
    pub ref_partners: usize,
    /// A query anchor forms quads from its first this-many partners.
    pub query_partners: usize,
    /// The largest time factor (either way) a query is searched for: 2.0 covers
    /// playback at half to double speed.
    pub max_time_factor: f32,
    /// Expected jitter of a peak's log-frequency between two renditions, in bins.
    pub df_tolerance_bins: f32,
    /// Expected jitter of a peak's time between two renditions, in frames.
    pub time_tolerance_frames: f32,
    /// At most this many hash cells are tried per query quad.
    pub max_expansions: usize,
    /// Peaks per hash: 3 (triplets, the default: an anchor and two partners, hashed by
    /// two frequency differences, one time ratio and their loudness order) or 4 (quads,
    /// the default before session 9: three differences and two ratios; BENCHMARKS.md).
    pub hash_peaks: usize,
    /// Bits of loudness order in the hash (0 to `hash_peaks - 1`; 2 by default): bit
    /// i says whether the hash's peak i+1 is louder than peak i. Gain, pitch shift and
    /// time scale keep the order; a mix or a filter can swap two peaks of near-equal
    /// strength, so a query also tries the other order when the two differ by less than
    /// `strength_tolerance`. Each bit makes the keys up to twice as specific.
    pub hash_order_bits: u32,
    /// Difference of log power (natural log) under which a query tries both loudness
    /// orders of two peaks.
    pub strength_tolerance: f32,
    /// Peaks per second of the query's verification peak set: dense, with a small
    /// neighbourhood, so that a reference peak that survives in the mix at all is found.
    pub verify_peaks_per_s: f32,
    /// The verification peaks' neighbourhood in frames...
    pub verify_radius_frames: usize,
    /// ...and in bins.
    pub verify_radius_bins: usize,
    /// Peaks per second of the reference's verification peak set, which the store keeps
    /// beside the hashes: denser than the hash peaks, with a smaller neighbourhood, so
    /// that verification tests more of a sample's peaks than the hashes are made of.
    pub ref_verify_peaks_per_s: f32,
    /// The reference verification peaks' neighbourhood in frames...
    pub ref_verify_radius_frames: usize,
    /// ...and in bins.
    pub ref_verify_radius_bins: usize,
    /// The grid a reference's hashes store their anchor time on, in units of
    /// 1/[`TIME_SCALE`] frame (a power of two, as are the two steps below). The store's
    /// blocks drop the low bits that are zero in every value, so a coarser grid costs fewer
    /// bits; by default every field keeps its full precision (1, 1, 1), because every grid
    /// measured cost recall (BENCHMARKS.md, session 14): bins on 1/2 bin and spans on a
    /// frame took the benchmark's store from 7.22 to 5.97 MB per hour but found 5 of 332
    /// samples fewer over the four sweeps, 1/8 bin and 1/4 frame 6.56 MB per hour and 3
    /// fewer (short, chopped and looped samples have few hits, and a coarse time factor
    /// or pitch per hit spreads their votes), and times on 2 frames moved the fitted tempo
    /// of 2-second loops by up to 0.6%. Since session 15 a time grid other than the span's
    /// also costs the store its partner distances (a span no longer lands on a stored
    /// time), so it makes the store larger, not smaller.
    pub stored_time_step: u32,
    /// The grid of the stored anchor bin, in units of 1/[`FREQ_SCALE`] bin.
    pub stored_freq_step: u16,
    /// The grid of the stored span, in units of 1/[`SPAN_SCALE`] frame.
    pub stored_span_step: u16,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            sample_rate_hz: 16_000,
            fft_size: 1024,
            hop: 128,
            fmin_hz: 125.0,
            bins_per_octave: 36,
            n_octaves: 5.5,
            peak_radius_frames: 8,
            peak_radius_bins: 9,
            query_peak_radius_frames: 8,
            query_peak_radius_bins: 9,
            min_log_power: -18.0,
            // 60 dB: ln(10^6).
            dynamic_range_log: 13.8,
            density_block_frames: 125,
            density_subbands: 3,
            ref_peaks_per_s: 24.0,
            query_peaks_per_s: 48.0,
            quad_min_dt_frames: 3.0,
            quad_max_dt_frames: 100.0,
            quad_df_range_bins: 30.0,
            quad_df_step_bins: 1.0,
            quad_ratio_levels: 128,
            ref_partners: 6,
            query_partners: 9,
            max_time_factor: 2.0,
            df_tolerance_bins: 0.35,
            time_tolerance_frames: 0.6,
            max_expansions: 8,
            hash_peaks: 3,
            hash_order_bits: 2,
            strength_tolerance: 1.0,
            verify_peaks_per_s: 120.0,
            verify_radius_frames: 3,
            verify_radius_bins: 3,
            ref_verify_peaks_per_s: 48.0,
            ref_verify_radius_frames: 4,
            ref_verify_radius_bins: 4,
            stored_time_step: 1,
            stored_freq_step: 1,
            stored_span_step: 1,
        }
    }
}

impl Params {
    /// Number of log-frequency bins.
    pub fn n_bins(&self) -> usize {
        (self.n_octaves * self.bins_per_octave as f32).round() as usize
    }

    /// Centre frequency of a (fractional) log bin.
    pub fn bin_hz(&self, bin: f32) -> f32 {
        self.fmin_hz * 2f32.powf(bin / self.bins_per_octave as f32)
    }

    /// The (fractional) log bin of a frequency.
    pub fn hz_to_bin(&self, hz: f32) -> f32 {
        (hz / self.fmin_hz).log2() * self.bins_per_octave as f32
    }

    /// Seconds per frame.
    pub fn frame_s(&self) -> f64 {
        self.hop as f64 / self.sample_rate_hz as f64
    }

    /// Log bins per semitone.
    pub fn bins_per_semitone(&self) -> f32 {
        self.bins_per_octave as f32 / 12.0
    }

    /// Checks every parameter; called by [`Fingerprinter::new`].
    pub fn validate(&self) -> Result<(), FingerprintError> {
        let bad = |m: &str| Err(FingerprintError::InvalidParams(m.to_string()));
        if !(4_000..=48_000).contains(&self.sample_rate_hz) {
            return bad("sample_rate_hz must be 4000..=48000");
        }
        if !self.fft_size.is_power_of_two() || !(256..=8192).contains(&self.fft_size) {
            return bad("fft_size must be a power of two in 256..=8192");
        }
        if self.hop == 0 || self.hop > self.fft_size {
            return bad("hop must be 1..=fft_size");
        }
        if self.bin_hz(self.n_bins() as f32) >= self.sample_rate_hz as f32 / 2.0 {
            return bad("the log axis must end below the Nyquist frequency");
        }
        if self.fmin_hz <= 0.0 || self.n_bins() < 8 {
            return bad("fmin_hz must be positive and the axis at least 8 bins");
        }
        if !(self.quad_min_dt_frames >= 1.0 && self.quad_max_dt_frames > self.quad_min_dt_frames) {
            return bad("quad_min_dt_frames must be >= 1 and below quad_max_dt_frames");
        }
        if self.quad_max_dt_frames * SPAN_SCALE * self.max_time_factor >= u16::MAX as f32 {
            return bad("quad_max_dt_frames too large for the 16-bit span field");
        }
        if self.n_bins() as f32 * FREQ_SCALE >= u16::MAX as f32 {
            return bad("too many bins for the 16-bit frequency field");
        }
        if !(self.quad_df_step_bins > 0.0 && self.quad_df_range_bins >= self.quad_df_step_bins) {
            return bad("quad_df_step_bins must be positive and at most quad_df_range_bins");
        }
        if !(3..=4).contains(&self.hash_peaks) {
            return bad("hash_peaks must be 3 or 4");
        }
        let df_levels = (2.0 * self.quad_df_range_bins / self.quad_df_step_bins).floor() as u64 + 1;
        let tolerance_ok = self.strength_tolerance >= 0.0 && self.strength_tolerance.is_finite();
        if self.hash_order_bits as usize >= self.hash_peaks || !tolerance_ok {
            return bad("hash_order_bits must be below hash_peaks, strength_tolerance >= 0");
        }
        let cells = (df_levels.pow(self.hash_peaks as u32 - 1)
            * (self.quad_ratio_levels as u64).pow(self.hash_peaks as u32 - 2))
            << self.hash_order_bits;
        if self.quad_ratio_levels < 2 || cells > u32::MAX as u64 {
            return bad("the hash grid must have 2+ ratio levels and fit in 32 bits");
        }
        if self.ref_partners < 3 || self.query_partners < self.ref_partners {
            return bad("ref_partners must be >= 3 and query_partners >= ref_partners");
        }
        if self.query_partners > 16 {
            return bad("query_partners above 16 makes C(n,3) lookups explode");
        }
        if !(1.0..=4.0).contains(&self.max_time_factor) {
            return bad("max_time_factor must be 1..=4");
        }
        if self.max_expansions == 0 || self.max_expansions > 32 {
            return bad("max_expansions must be 1..=32");
        }
        if !(self.ref_peaks_per_s > 0.0
            && self.query_peaks_per_s > 0.0
            && self.verify_peaks_per_s > 0.0
            && self.ref_verify_peaks_per_s > 0.0)
        {
            return bad("peak densities must be positive");
        }
        // The store saves the low bits that are zero in every value: only a power-of-two
        // grid has them.
        let grid_ok = self.stored_time_step.is_power_of_two()
            && self.stored_time_step <= 64 * 16
            && self.stored_freq_step.is_power_of_two()
            && self.stored_freq_step <= 4 * 64
            && self.stored_span_step.is_power_of_two()
            && self.stored_span_step <= 4 * 16;
        if !grid_ok {
            return bad(
                "stored grid steps must be powers of two up to 64 frames, 4 bins, 4 frames",
            );
        }
        Ok(())
    }

    /// Whether a reference's verification peaks are its hash peaks (the same density and
    /// neighbourhood).
    pub fn verifies_on_hash_peaks(&self) -> bool {
        self.ref_verify_peaks_per_s == self.ref_peaks_per_s
            && self.ref_verify_radius_frames == self.peak_radius_frames
            && self.ref_verify_radius_bins == self.peak_radius_bins
    }

    /// A canonical rendering of every parameter that changes what a reference stores.
    /// Query-only parameters are left out: they can change without rebuilding a store.
    pub fn describe(&self) -> String {
        // Quads, no order bits and verification on the hash peaks, as the first stores
        // were built, add nothing, so that those stores keep their description.
        let hash = if self.hash_peaks == 4 { "" } else { " hp=3" };
        let order = match self.hash_order_bits {
            0 => String::new(),
            bits => format!(" ob={bits}"),
        };
        let verify = if self.verifies_on_hash_peaks() {
            String::new()
        } else {
            format!(
                " rv={}/{}x{}",
                self.ref_verify_peaks_per_s,
                self.ref_verify_radius_frames,
                self.ref_verify_radius_bins
            )
        };
        // Full precision (the default, as every store before format 4 kept) adds nothing.
        let grid = match (
            self.stored_time_step,
            self.stored_freq_step,
            self.stored_span_step,
        ) {
            (1, 1, 1) => String::new(),
            (time, freq, span) => format!(" grid={time}/{freq}/{span}"),
        };
        format!(
            "cratedigger-fp/{} sr={} fft={} hop={} fmin={} bpo={} oct={} pr={}x{} minp={} dr={} \
             block={} sub={} pps={} dt={}..{} df={}/{} rl={} k={}{hash}{order}{verify}{grid}",
            ALGORITHM_VERSION,
            self.sample_rate_hz,
            self.fft_size,
            self.hop,
            self.fmin_hz,
            self.bins_per_octave,
            self.n_octaves,
            self.peak_radius_frames,
            self.peak_radius_bins,
            self.min_log_power,
            self.dynamic_range_log,
            self.density_block_frames,
            self.density_subbands,
            self.ref_peaks_per_s,
            self.quad_min_dt_frames,
            self.quad_max_dt_frames,
            self.quad_df_range_bins,
            self.quad_df_step_bins,
            self.quad_ratio_levels,
            self.ref_partners,
        )
    }
}

/// What a reference recording contributes to a store.
#[derive(Clone, Debug)]
pub struct ReferencePrint {
    /// The quads to index.
    pub quads: Vec<RefQuad>,
    /// The peaks the quads were built from, sorted by time.
    pub peaks: Vec<Peak>,
    /// The peaks that verification compares with a query's (`Params::ref_verify_*`),
    /// sorted by time.
    pub verify_peaks: Vec<Peak>,
}

/// What a query recording is searched with.
#[derive(Clone, Debug)]
pub struct QueryPrint {
    /// The quads to look up.
    pub quads: Vec<QueryQuad>,
    /// Dense peaks for verifying candidates, sorted by time.
    pub verify_peaks: Vec<Peak>,
    /// Frames and bins of the query's spectrogram.
    pub n_frames: usize,
    pub n_bins: usize,
}

/// Turns samples into reference or query quads for one validated parameter set.
pub struct Fingerprinter {
    params: Params,
    spectrogram: SpectrogramBuilder,
}

impl Fingerprinter {
    /// Validates `params` and plans the transforms.
    pub fn new(params: Params) -> Result<Self, FingerprintError> {
        params.validate()?;
        let spectrogram = SpectrogramBuilder::new(&params);
        Ok(Self {
            params,
            spectrogram,
        })
    }

    /// The parameters in use.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The log-frequency spectrogram of `samples`.
    pub fn spectrogram(&self, samples: &[f32]) -> LogSpectrogram {
        self.spectrogram.compute(samples)
    }

    /// Peaks of `samples` at the given density and neighbourhood (frames, bins).
    pub fn peaks(&self, samples: &[f32], peaks_per_s: f32, radius: (usize, usize)) -> Vec<Peak> {
        peaks::find_peaks(
            &self.spectrogram(samples),
            &self.params,
            peaks_per_s,
            radius,
        )
    }

    /// The peaks a reference's hashes are built from.
    fn reference_hash_peaks(&self, spec: &LogSpectrogram) -> Vec<Peak> {
        let p = &self.params;
        peaks::find_peaks(
            spec,
            p,
            p.ref_peaks_per_s,
            (p.peak_radius_frames, p.peak_radius_bins),
        )
    }

    /// A picker of the peaks a query's hashes are built from, for `n_bins` bins a frame.
    fn query_hash_picker(&self, n_bins: usize) -> PeakPicker<'_> {
        let p = &self.params;
        PeakPicker::new(
            p,
            p.query_peaks_per_s,
            (p.query_peak_radius_frames, p.query_peak_radius_bins),
            n_bins,
        )
    }

    /// A picker of a query's dense verification peaks, for `n_bins` bins a frame.
    fn query_verify_picker(&self, n_bins: usize) -> PeakPicker<'_> {
        let p = &self.params;
        PeakPicker::new(
            p,
            p.verify_peaks_per_s,
            (p.verify_radius_frames, p.verify_radius_bins),
            n_bins,
        )
    }

    /// The print of the query whose spectrogram is `spec`, with the pickers of its two
    /// peak sets (fed some of its frames already, or none).
    fn query_print_with(
        &self,
        spec: &LogSpectrogram,
        hash_peaks: PeakPicker<'_>,
        verify_peaks: PeakPicker<'_>,
    ) -> QueryPrint {
        // The two peak sets are independent, and the hashes need only the hash peaks: a
        // query waits for its answer, so they are paired while the verification peaks
        // are finished.
        let (quads, verify_peaks) = rayon::join(
            || quads::query_quads(&hash_peaks.finish(&spec.data), &self.params),
            || verify_peaks.finish(&spec.data),
        );
        QueryPrint {
            quads,
            verify_peaks,
            n_frames: spec.n_frames,
            n_bins: spec.n_bins,
        }
    }

    /// The quads to store for a reference recording.
    pub fn reference(&self, samples: &[f32]) -> Vec<RefQuad> {
        let peaks = self.reference_hash_peaks(&self.spectrogram(samples));
        quads::reference_quads(&peaks, &self.params)
    }

    /// The quads to store for a reference recording, and its verification peaks, from one
    /// spectrogram.
    pub fn reference_print(&self, samples: &[f32]) -> ReferencePrint {
        let p = &self.params;
        let spec = self.spectrogram(samples);
        let peaks = self.reference_hash_peaks(&spec);
        let verify_peaks = if p.verifies_on_hash_peaks() {
            peaks.clone()
        } else {
            peaks::find_peaks(
                &spec,
                p,
                p.ref_verify_peaks_per_s,
                (p.ref_verify_radius_frames, p.ref_verify_radius_bins),
            )
        };
        ReferencePrint {
            quads: quads::reference_quads(&peaks, p),
            peaks,
            verify_peaks,
        }
    }

    /// The quads to look up for a query.
    pub fn query(&self, samples: &[f32]) -> Vec<QueryQuad> {
        let spec = self.spectrogram(samples);
        let peaks = self.query_hash_picker(spec.n_bins).finish(&spec.data);
        quads::query_quads(&peaks, &self.params)
    }

    /// The quads to look up for a query and its dense verification peaks, from one
    /// spectrogram.
    pub fn query_print(&self, samples: &[f32]) -> QueryPrint {
        self.query_print_of(&self.spectrogram(samples))
    }

    /// A spectrogram to feed a query's samples as they are decoded, for
    /// [`Self::query_print_of`]: the spectrogram then overlaps the decoding.
    pub fn spectrogram_stream(&self) -> SpectrogramStream<'_> {
        self.spectrogram.stream()
    }

    /// A query's print to feed its samples as they are decoded: the spectrogram and most
    /// of the peak picking then overlap the decoding. Gives exactly [`Self::query_print`]
    /// of all the samples.
    pub fn query_stream(&self) -> QueryStream<'_> {
        let n_bins = self.spectrogram.n_bins();
        QueryStream {
            fingerprinter: self,
            spectrogram: self.spectrogram.stream(),
            hash_peaks: self.query_hash_picker(n_bins),
            verify_peaks: self.query_verify_picker(n_bins),
        }
    }

    /// [`Self::query_print`] from the query's spectrogram.
    pub fn query_print_of(&self, spec: &LogSpectrogram) -> QueryPrint {
        self.query_print_with(
            spec,
            self.query_hash_picker(spec.n_bins),
            self.query_verify_picker(spec.n_bins),
        )
    }
}

/// A query's print made as its samples arrive ([`Fingerprinter::query_stream`]).
pub struct QueryStream<'f> {
    fingerprinter: &'f Fingerprinter,
    spectrogram: SpectrogramStream<'f>,
    hash_peaks: PeakPicker<'f>,
    verify_peaks: PeakPicker<'f>,
}

impl QueryStream<'_> {
    /// Takes the next samples of the signal.
    pub fn push(&mut self, samples: &[f32]) {
        self.spectrogram.push(samples);
        let data = self.spectrogram.data();
        self.hash_peaks.advance(data);
        self.verify_peaks.advance(data);
    }

    /// The print of everything pushed.
    pub fn finish(self) -> QueryPrint {
        let spec = self.spectrogram.finish();
        self.fingerprinter
            .query_print_with(&spec, self.hash_peaks, self.verify_peaks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_stream_in_pieces_gives_the_query_print() {
        // Three seconds of tones that come and go over noise, so that there are peaks
        // near every piece's edges.
        let fp = Fingerprinter::new(Params::default()).expect("valid");
        let samples: Vec<f32> = spectrogram::tests::noise(48_000, 7)
            .into_iter()
            .enumerate()
            .map(|(i, noise)| {
                let noise = noise * 0.05;
                let t = i as f32 / 16_000.0;
                let on = ((i / 1_700) % 3 != 0) as u8 as f32;
                let tone =
                    (t * (440.0 + 90.0 * ((i / 1_700) % 5) as f32) * std::f32::consts::TAU).sin();
                noise + on * tone * 0.3
            })
            .collect();
        let whole = fp.query_print(&samples);
        assert!(whole.quads.len() > 1_000 && whole.verify_peaks.len() > 100);
        for piece in [1, 127, 1_000, 4_097, 48_000] {
            let mut stream = fp.query_stream();
            for chunk in samples.chunks(piece) {
                stream.push(chunk);
            }
            let streamed = stream.finish();
            assert_eq!(streamed.quads, whole.quads, "pieces of {piece}");
            assert_eq!(
                streamed.verify_peaks, whole.verify_peaks,
                "pieces of {piece}"
            );
            assert_eq!(
                (streamed.n_frames, streamed.n_bins),
                (whole.n_frames, whole.n_bins)
            );
        }
    }

    #[test]
    fn default_params_are_valid() {
        assert!(Params::default().validate().is_ok());
    }

    #[test]
    fn bad_params_are_rejected_at_construction() {
        let d = Params::default;
        let bad = [
            Params {
                fft_size: 1000,
                ..d()
            },
            Params {
                quad_df_step_bins: 0.01,
                ..d()
            },
            // A triplet has two orders to tell, not three; a tolerance must be a number.
            Params {
                hash_order_bits: 3,
                ..d()
            },
            Params {
                strength_tolerance: f32::NAN,
                ..d()
            },
            Params {
                ref_verify_peaks_per_s: 0.0,
                ..d()
            },
            // A stored grid must be a power of two (only those save bits) and not zero.
            Params {
                stored_freq_step: 3,
                ..d()
            },
            Params {
                stored_time_step: 0,
                ..d()
            },
            Params {
                stored_span_step: 128,
                ..d()
            },
        ];
        for p in bad {
            assert!(Fingerprinter::new(p.clone()).is_err(), "{p:?}");
        }
    }

    #[test]
    fn describe_changes_with_reference_params_only() {
        let a = Params::default();
        let b = Params {
            ref_partners: 5,
            ..Params::default()
        };
        let c = Params {
            query_partners: 12,
            ..Params::default()
        };
        assert_ne!(a.describe(), b.describe());
        assert_eq!(a.describe(), c.describe());
        // The hash's shape is part of what a store was built with.
        let quads = Params {
            hash_peaks: 4,
            hash_order_bits: 0,
            ..Params::default()
        };
        let no_order = Params {
            hash_order_bits: 0,
            ..Params::default()
        };
        assert!(a.describe().contains(" hp=3 ob=2 "), "{}", a.describe());
        assert_ne!(a.describe(), quads.describe());
        assert_ne!(a.describe(), no_order.describe());
        // So are the verification peaks it keeps beside the hashes.
        let sparse_verify = Params {
            ref_verify_peaks_per_s: 24.0,
            ..Params::default()
        };
        // And the grid its hashes store positions on, when it is not full precision.
        let coarse = Params {
            stored_freq_step: 32,
            stored_span_step: 16,
            ..Params::default()
        };
        assert!(a.describe().ends_with(" rv=48/4x4"), "{}", a.describe());
        assert!(
            coarse.describe().ends_with(" rv=48/4x4 grid=1/32/16"),
            "{}",
            coarse.describe()
        );
        assert_ne!(a.describe(), sparse_verify.describe());
        // Verification on the hash peaks themselves, as stores before session 10 kept,
        // describes itself as those stores do.
        let on_hash_peaks = Params {
            ref_verify_peaks_per_s: a.ref_peaks_per_s,
            ref_verify_radius_frames: a.peak_radius_frames,
            ref_verify_radius_bins: a.peak_radius_bins,
            ..Params::default()
        };
        assert!(
            on_hash_peaks.describe().ends_with(" hp=3 ob=2"),
            "{}",
            on_hash_peaks.describe()
        );
    }

    /// A reference's verification peaks are a set of their own, denser than its hash
    /// peaks, and computing them leaves the hashes as they were.
    #[test]
    fn reference_verification_peaks_are_denser_and_leave_the_hashes_alone() {
        let fp = Fingerprinter::new(Params::default()).expect("default parameters are valid");
        let p = fp.params().clone();
        let rate = p.sample_rate_hz as f32;
        // Ten seconds of chords that change every quarter second, over a quiet noise
        // floor.
        let mut seed = 12345u32;
        let samples: Vec<f32> = (0..(10.0 * rate) as usize)
            .map(|i| {
                let t = i as f32 / rate;
                let step = (t * 4.0) as u32;
                let tone: f32 = (0..4)
                    .map(|k| {
                        let f = 200.0 * 2f32.powf(((step * 7 + k * 5) % 30) as f32 / 12.0);
                        (2.0 * std::f32::consts::PI * f * t).sin()
                    })
                    .sum();
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                0.2 * tone + 0.01 * ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            })
            .collect();
        let print = fp.reference_print(&samples);
        assert_eq!(print.quads, fp.reference(&samples));
        assert_eq!(
            print.peaks,
            fp.peaks(
                &samples,
                p.ref_peaks_per_s,
                (p.peak_radius_frames, p.peak_radius_bins)
            )
        );
        assert!(
            print.verify_peaks.len() > print.peaks.len() * 3 / 2,
            "{} verification peaks, {} hash peaks",
            print.verify_peaks.len(),
            print.peaks.len()
        );
        assert!(print.verify_peaks.is_sorted_by(|a, b| a.time <= b.time));
    }
}
