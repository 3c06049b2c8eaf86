//! The cratedigger library: index reference recordings, then find which of them a new
//! song samples, where, and how they were transformed.
//!
//! ```no_run
//! use engine::Engine;
//! # fn main() -> Result<(), engine::EngineError> {
//! let engine = Engine::open(std::path::Path::new("/tmp/cratedigger-db"))?;
//! engine.index_paths(&["/music/funk".into()], &mut |_event| {})?;
//! let found = engine.identify_file(std::path::Path::new("new-song.mp3"))?;
//! for m in &found.matches {
//!     println!("{} at {:.1}s, tempo x{:.3}", m.path, m.query_start_s, m.tempo);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The engine owns the pipeline (decode -> fingerprint -> store, and decode -> fingerprint
//! -> lookup -> match) and nothing about argument parsing or wire formats beyond the
//! serialisable report types below.

pub mod catalogue;
pub mod graph;
mod hits;
mod report;
pub mod scan;
mod walk;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use fingerprint::{FREQ_SCALE, Fingerprinter, Params, QueryPrint, SPAN_SCALE, whole_frames};
use index::{LmdbStore, Posting, Store, TrackId, TrackInfo};
use matcher::{Hit, MatchParams, SampleMatch};
use rayon::prelude::*;

/// The audio file extensions the engine tries to decode (lower-case, without the dot).
pub use audio::SUPPORTED_EXTENSIONS;
pub use catalogue::{
    Candidate, ImportSummary, MetadataEdit, MetadataRow, Resolved, parse_metadata_csv,
    parse_metadata_json,
};
pub use graph::{Direction, Edge, Graph, Node, TrackRelations};
pub use report::{Identification, MatchKind, MatchReport, OccurrenceReport};
pub use scan::{RelationKind, ScanEvent, ScanSummary};
pub use walk::collect_audio_files;

/// Errors of the engine; each names what the caller can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The audio could not be read or decoded; skip this file.
    #[error("{path}: {source}")]
    Audio {
        path: String,
        #[source]
        source: audio::AudioError,
    },
    /// The store failed or is incompatible; see the message.
    #[error(transparent)]
    Store(#[from] index::IndexError),
    /// The fingerprint parameters are invalid.
    #[error(transparent)]
    Params(#[from] fingerprint::FingerprintError),
    /// The audio is too short to fingerprint.
    #[error("{path}: too short to fingerprint ({duration_s:.2} s)")]
    TooShort { path: String, duration_s: f64 },
    /// A path given to index does not exist or cannot be listed.
    #[error("{path}: {source}")]
    Walk {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// No track has that id or path.
    #[error("no track {0} in the store")]
    NoSuchTrack(String),
    /// A metadata file (CSV or JSON) or a metadata value is malformed; nothing was changed.
    #[error("{0}")]
    BadMetadata(String),
    /// A relation could not be encoded for the store (a bug, not a user error).
    #[error("cannot encode a relation: {0}")]
    Encode(String),
    /// Other writers kept changing this file's entry while it was being stored.
    #[error(
        "{path}: other processes changed its entry in the store {attempts} times while it \
         was being stored; index it again"
    )]
    Contended { path: String, attempts: usize },
}

/// Which stored tracks an identification may report as references.
///
/// The filter is applied as postings are visited, before hits are kept, so a filtered-out
/// track costs no memory and cannot take part in matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceFilter {
    /// Only references whose id lies in this range.
    pub ids: RangeInclusive<TrackId>,
    /// Never this track (a scanned track is not compared with itself).
    pub exclude: Option<TrackId>,
}

impl ReferenceFilter {
    /// Every stored track.
    pub fn all() -> Self {
        Self {
            ids: 0..=TrackId::MAX,
            exclude: None,
        }
    }

    /// Whether `id` may be reported.
    pub fn admits(&self, id: TrackId) -> bool {
        self.ids.contains(&id) && self.exclude != Some(id)
    }
}

/// A key is "common" above this many times the mean postings per key (BENCHMARKS.md).
const COMMON_KEY_FACTOR: f64 = 6.0;
/// ...but never below this many postings.
const MIN_COMMON_KEY_CAP: usize = 20;

/// Default memory for a query's hits, in MB ([`Engine::set_identify_memory_mb`]): a 3-minute
/// song makes about 0.5M hits (8 MB) per hour of references, so one pass serves it up to
/// about 120 hours of references.
pub const DEFAULT_IDENTIFY_MEMORY_MB: usize = 1024;

/// Hits in a megabyte (a hit is 16 bytes).
const HITS_PER_MB: usize = (1 << 20) / std::mem::size_of::<Hit>();

/// The vectors a query's hits are looked up into (`Store::lookup_sharded`): a fixed
/// number, so that the hits' order, and with it every result, does not depend on the
/// machine's thread count; at least as many as the threads a lookup can use.
const LOOKUP_SHARDS: usize = 16;

/// How often a file's write is tried when other writers keep storing the same path or
/// bytes in between: each refusal means another process made progress, and one retry
/// sees it; more than a few in a row means something keeps rewriting the entry.
const COMMIT_ATTEMPTS: usize = 4;

/// What indexing one file did.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexOutcome {
    /// A new track was stored.
    Added { id: TrackId, duration_s: f64 },
    /// The file was indexed before and has not changed; nothing was done.
    Unchanged { id: TrackId },
    /// The file changed since it was indexed: its old entries were replaced.
    Replaced {
        old: TrackId,
        id: TrackId,
        duration_s: f64,
    },
    /// The same audio bytes are already stored under another path; stored once.
    Duplicate { of: TrackId },
}

/// Progress of [`Engine::index_paths`], one event per file.
#[derive(Debug)]
pub enum IndexEvent<'a> {
    /// About to process this many files.
    Started { n_files: usize },
    /// One file done.
    Done {
        path: &'a Path,
        outcome: &'a IndexOutcome,
    },
    /// One file failed; the others go on.
    Failed {
        path: &'a Path,
        error: &'a EngineError,
    },
}

/// Totals of one indexing run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexSummary {
    pub added: usize,
    pub unchanged: usize,
    pub replaced: usize,
    pub duplicates: usize,
    pub failed: usize,
    /// Seconds of audio decoded and fingerprinted.
    pub audio_s: f64,
    /// Thread-seconds spent in each stage, summed over the workers.
    pub stages: StageTimes,
}

/// Thread-seconds spent in each indexing stage: reading and hashing files, decoding to
/// mono 16 kHz, fingerprinting, and writing to the store (one writer).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    pub hash_s: f64,
    pub decode_s: f64,
    pub fingerprint_s: f64,
    pub store_s: f64,
}

impl StageTimes {
    fn add(&mut self, other: &StageTimes) {
        self.hash_s += other.hash_s;
        self.decode_s += other.decode_s;
        self.fingerprint_s += other.fingerprint_s;
        self.store_s += other.store_s;
    }
}

impl IndexSummary {
    fn count(&mut self, outcome: &IndexOutcome) {
        match outcome {
            IndexOutcome::Added { duration_s, .. } => {
                self.added += 1;
                self.audio_s += duration_s;
            }
            IndexOutcome::Replaced { duration_s, .. } => {
                self.replaced += 1;
                self.audio_s += duration_s;
            }
            IndexOutcome::Unchanged { .. } => self.unchanged += 1,
            IndexOutcome::Duplicate { .. } => self.duplicates += 1,
        }
    }
}

/// A decoded and fingerprinted file, ready to be stored.
struct Prepared {
    info: TrackInfo,
    entries: Vec<(u32, u32, u16, u16)>,
    /// The reference's peaks in stored form, for verification.
    peaks: Vec<u8>,
    /// Time spent on this file so far.
    stages: StageTimes,
    replaces: Option<TrackId>,
}

/// A file's way through the indexing pipeline, from a worker to the writer.
enum Step {
    /// Nothing to store.
    Outcome(IndexOutcome),
    /// Decoded and fingerprinted, to be stored.
    Ready(Box<Prepared>),
}

/// What to do with a file, decided before decoding it.
enum Plan {
    Skip(IndexOutcome),
    Index(Pending),
}

/// A file to decode and store, with what `plan` already learnt about it.
struct Pending {
    /// The catalogue key of its path (`path_key`).
    key: String,
    hash_hex: String,
    replaces: Option<TrackId>,
    /// Seconds spent reading and hashing it.
    hash_s: f64,
}

/// The cratedigger engine over one store.
pub struct Engine {
    store: Box<dyn Store>,
    fingerprinter: Fingerprinter,
    match_params: MatchParams,
    decode: audio::DecodeOptions,
    max_identify_hits: usize,
    /// Whether identify also searches the query resampled at [`DEEP_SPEEDS`].
    deep: bool,
}

/// The speeds that a deep search ([`Engine::set_deep`]) also looks the query up at, each
/// resampled to undo that speed (tempo and pitch together, as a turntable changes them)
/// and searched for speed changes within the given factor of it. The fingerprint keeps
/// fewer of its hashes the further a sample's speed is from 1 (session 19); through the
/// CLI these four found 3 more of the benchmark's 84 core samples and 8 more of its 248
/// full-suite ones, with no more false positives on queries or whole songs, at 3-4
/// times the time (BENCHMARKS.md, session 20).
pub const DEEP_SPEEDS: [(f32, f32); 4] = [(0.55, 1.25), (0.75, 1.15), (1.33, 1.15), (1.8, 1.25)];

/// How far, in semitones, the pitch of a match that a deep search finds at one of
/// [`DEEP_SPEEDS`] may be from what its tempo implies for a change of speed.
const DEEP_PITCH_TOLERANCE_ST: f64 = 1.0;

/// What searching one query found, before it becomes a report.
struct Searched {
    matches: Vec<SampleMatch>,
    n_lookups: usize,
    n_hits: usize,
    n_passes: usize,
    timings: report::Timings,
}

impl Engine {
    /// Opens (or creates) the LMDB store in `dir` with the default parameters.
    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        let params = Params::default();
        let store = LmdbStore::open(dir, &params.describe())?;
        Self::with_store(Box::new(store), params)
    }

    /// Opens an existing LMDB store for reading only (another process may be writing).
    pub fn open_read_only(dir: &Path) -> Result<Self, EngineError> {
        let params = Params::default();
        let store = LmdbStore::open_read_only(dir, &params.describe())?;
        Self::with_store(Box::new(store), params)
    }

    /// Compacts the existing LMDB store in `dir` in place and returns its file size in
    /// bytes before and after: see [`LmdbStore::compact_in_place`] (the store must not be
    /// open anywhere else, this process included).
    pub fn compact_store(dir: &Path) -> Result<(u64, u64), EngineError> {
        if !dir.join("data.mdb").is_file() {
            return Err(index::IndexError::NotFound {
                dir: dir.to_owned(),
            }
            .into());
        }
        let params = Params::default();
        Ok(LmdbStore::open(dir, &params.describe())?.compact_in_place()?)
    }

    /// An engine with the default parameters over a store that `open_store` opens from
    /// their description (`Params::describe`), e.g. a Redis Cluster store.
    pub fn open_with(
        open_store: impl FnOnce(&str) -> Result<Box<dyn Store>, index::IndexError>,
    ) -> Result<Self, EngineError> {
        let params = Params::default();
        let store = open_store(&params.describe())?;
        Self::with_store(store, params)
    }

    /// An engine over any store, with the given fingerprint parameters. The store must
    /// have been created for `params.describe()`.
    pub fn with_store(store: Box<dyn Store>, params: Params) -> Result<Self, EngineError> {
        let fingerprinter = Fingerprinter::new(params)?;
        let p = fingerprinter.params();
        let match_params = MatchParams {
            frame_s: p.frame_s(),
            bins_per_semitone: p.bins_per_semitone() as f64,
            max_time_factor: p.max_time_factor as f64 * 1.02,
            ..MatchParams::default()
        };
        let decode = audio::DecodeOptions {
            target_rate_hz: p.sample_rate_hz,
            ..audio::DecodeOptions::default()
        };
        Ok(Self {
            store,
            fingerprinter,
            match_params,
            decode,
            max_identify_hits: DEFAULT_IDENTIFY_MEMORY_MB * HITS_PER_MB,
            deep: false,
        })
    }

    /// Makes identify also search the query resampled at each of [`DEEP_SPEEDS`]: more
    /// of the samples whose speed is far from 1 are found, and identify takes 3-4 times
    /// as long and holds the decoded query (64 KB a second) while it searches. Off by
    /// default.
    pub fn set_deep(&mut self, deep: bool) {
        self.deep = deep;
    }

    /// Replaces the matcher settings (thresholds); for benchmarks and experts.
    pub fn set_match_params(&mut self, match_params: MatchParams) {
        self.match_params = match_params;
    }

    /// The matcher settings in use.
    pub fn match_params(&self) -> &MatchParams {
        &self.match_params
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Indexes every supported audio file under `paths` (files or folders), decoding and
    /// fingerprinting in parallel and storing each file in its own transaction. A file
    /// that fails is reported through `on_event` and the rest go on.
    pub fn index_paths(
        &self,
        paths: &[PathBuf],
        on_event: &mut dyn FnMut(IndexEvent<'_>),
    ) -> Result<IndexSummary, EngineError> {
        let mut files = Vec::new();
        for p in paths {
            files.extend(collect_audio_files(p).map_err(|source| EngineError::Walk {
                path: p.display().to_string(),
                source,
            })?);
        }
        files.sort();
        files.dedup();
        on_event(IndexEvent::Started {
            n_files: files.len(),
        });
        let mut summary = IndexSummary::default();
        // Workers decode and fingerprint; this thread alone writes, since the store takes
        // one writer at a time. The bounded channel keeps at most a few prepared files in
        // memory when writing is slower than preparing.
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Step, EngineError>)>(4);
        std::thread::scope(|scope| {
            let files = &files;
            scope.spawn(move || {
                files
                    .par_iter()
                    .enumerate()
                    .for_each_with(tx, |tx, (i, path)| {
                        let step = self.plan(path).and_then(|plan| match plan {
                            Plan::Skip(outcome) => Ok(Step::Outcome(outcome)),
                            Plan::Index(pending) => self
                                .prepare(path, pending)
                                .map(|p| Step::Ready(Box::new(p))),
                        });
                        // The receiver lives until every sender is gone.
                        let _ = tx.send((i, step));
                    });
            });
            for (i, step) in rx {
                let path = files[i].as_path();
                let result = step.and_then(|s| match s {
                    Step::Outcome(outcome) => Ok((outcome, StageTimes::default())),
                    Step::Ready(prepared) => self.commit(*prepared),
                });
                match result {
                    Ok((outcome, stages)) => {
                        summary.count(&outcome);
                        summary.stages.add(&stages);
                        on_event(IndexEvent::Done {
                            path,
                            outcome: &outcome,
                        });
                    }
                    Err(error) => {
                        summary.failed += 1;
                        on_event(IndexEvent::Failed {
                            path,
                            error: &error,
                        });
                    }
                }
            }
        });
        Ok(summary)
    }

    /// Indexes one file.
    pub fn index_file(&self, path: &Path) -> Result<IndexOutcome, EngineError> {
        match self.plan(path)? {
            Plan::Skip(outcome) => Ok(outcome),
            Plan::Index(pending) => Ok(self.commit(self.prepare(path, pending)?)?.0),
        }
    }

    /// Decides from the content hash alone whether a file needs decoding.
    fn plan(&self, path: &Path) -> Result<Plan, EngineError> {
        let started = Instant::now();
        let hash_hex = hex(&audio::content_hash(path).map_err(audio_error(path))?);
        let hash_s = started.elapsed().as_secs_f64();
        let key = path_key(path);
        let by_path = self.store.find_by_path(&key)?;
        if let Some(id) = self.store.find_by_content(&hash_hex)? {
            return Ok(Plan::Skip(if by_path == Some(id) {
                IndexOutcome::Unchanged { id }
            } else {
                IndexOutcome::Duplicate { of: id }
            }));
        }
        Ok(Plan::Index(Pending {
            key,
            hash_hex,
            replaces: by_path,
            hash_s,
        }))
    }

    fn prepare(&self, path: &Path, pending: Pending) -> Result<Prepared, EngineError> {
        let Pending {
            key,
            hash_hex,
            replaces,
            hash_s,
        } = pending;
        let started = Instant::now();
        let (decoded, tags) = audio::decode_file(path, &self.decode).map_err(audio_error(path))?;
        let decode_s = started.elapsed().as_secs_f64();
        let print = self.fingerprinter.reference_print(&decoded.samples);
        let quads = print.quads;
        if quads.is_empty() && decoded.duration_s < 1.0 {
            return Err(EngineError::TooShort {
                path: path.display().to_string(),
                duration_s: decoded.duration_s,
            });
        }
        let entries: Vec<(u32, u32, u16, u16)> = quads
            .iter()
            .map(|q| (q.hash, q.time, q.freq, q.span))
            .collect();
        let info = TrackInfo {
            path: key,
            content_hash: hash_hex,
            duration_s: decoded.duration_s,
            title: tags.title,
            artist: tags.artist,
            album: tags.album,
            year: tags.year,
            musicbrainz_recording_id: tags.musicbrainz_recording_id,
            musicbrainz_release_id: tags.musicbrainz_release_id,
            n_postings: entries.len() as u64,
            indexed_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let peaks = fingerprint::peak_list::encode(&print.verify_peaks);
        Ok(Prepared {
            info,
            entries,
            peaks,
            stages: StageTimes {
                hash_s,
                decode_s,
                fingerprint_s: started.elapsed().as_secs_f64() - decode_s,
                store_s: 0.0,
            },
            replaces,
        })
    }

    /// Stores a prepared file; also returns the time spent on it, storing included.
    fn commit(&self, p: Prepared) -> Result<(IndexOutcome, StageTimes), EngineError> {
        let started = Instant::now();
        let Prepared {
            info,
            entries,
            peaks,
            mut stages,
            mut replaces,
        } = p;
        let outcome = self.store_prepared(info, &entries, &peaks, &mut replaces)?;
        stages.store_s = started.elapsed().as_secs_f64();
        Ok((outcome, stages))
    }

    fn store_prepared(
        &self,
        info: TrackInfo,
        entries: &[(u32, u32, u16, u16)],
        peaks: &[u8],
        replaces: &mut Option<TrackId>,
    ) -> Result<IndexOutcome, EngineError> {
        let duration_s = info.duration_s;
        // `plan` looked at the store before decoding; since then this process (two files
        // with the same bytes) or another one (a second indexer on the store) may have
        // stored this path or these bytes. Look again, and if a writer gets in between
        // this look and the write, the write refuses and the next round sees what it did.
        for _ in 0..COMMIT_ATTEMPTS {
            if let Some(id) = self.store.find_by_content(&info.content_hash)? {
                return Ok(if self.store.find_by_path(&info.path)? == Some(id) {
                    IndexOutcome::Unchanged { id }
                } else {
                    IndexOutcome::Duplicate { of: id }
                });
            }
            match self
                .store
                .put_track_with_side_data(&info, entries, peaks, *replaces)
            {
                Ok(id) => {
                    return Ok(match *replaces {
                        Some(old) => IndexOutcome::Replaced {
                            old,
                            id,
                            duration_s,
                        },
                        None => IndexOutcome::Added { id, duration_s },
                    });
                }
                Err(
                    index::IndexError::PathTaken { .. }
                    | index::IndexError::ContentTaken { .. }
                    | index::IndexError::UnknownTrack { .. },
                ) => *replaces = self.store.find_by_path(&info.path)?,
                Err(error) => return Err(error.into()),
            }
        }
        Err(EngineError::Contended {
            path: info.path,
            attempts: COMMIT_ATTEMPTS,
        })
    }

    /// Removes a track by id or by the path it was indexed from.
    pub fn remove(&self, id_or_path: &str) -> Result<TrackId, EngineError> {
        let id = match id_or_path.parse::<TrackId>() {
            Ok(id) if self.store.track(id)?.is_some() => Some(id),
            _ => self.store.find_by_path(&path_key(Path::new(id_or_path)))?,
        };
        let id = id.ok_or_else(|| EngineError::NoSuchTrack(id_or_path.to_string()))?;
        if !self.store.remove_track(id)? {
            return Err(EngineError::NoSuchTrack(id_or_path.to_string()));
        }
        Ok(id)
    }

    /// Finds every sample of stored references in the audio file at `path`.
    pub fn identify_file(&self, path: &Path) -> Result<Identification, EngineError> {
        let name = path.display().to_string();
        let (found, _) = self.identify_decoding(&name, false, |sink| {
            audio::decode_file_streaming(path, &self.decode, sink)
                .map(|(decoded, _)| decoded)
                .map_err(audio_error(path))
        })?;
        Ok(found)
    }

    /// Finds every sample in audio held in memory (an upload; `ext_hint` is the format's
    /// usual file extension if known), and returns the decoded mono signal with the answer
    /// (to draw it). The same answer as [`Self::decode_bytes`] then
    /// [`Self::identify_samples`], sooner: the spectrogram is made while it decodes.
    pub fn identify_bytes(
        &self,
        name: &str,
        bytes: Vec<u8>,
        ext_hint: Option<&str>,
    ) -> Result<(Identification, Vec<f32>), EngineError> {
        self.identify_decoding(name, true, |sink| {
            audio::decode_bytes_streaming(bytes, ext_hint, &self.decode, sink)
                .map(|(decoded, _)| decoded)
                .map_err(named_audio_error(name))
        })
    }

    /// Identifies what `decode` decodes: it is handed a sink for the samples, which makes
    /// the spectrogram and picks most of the peaks on the decoder's helper thread as they
    /// come, so that they cost little time of their own (BENCHMARKS.md, sessions 16-17).
    /// Returns the samples too if asked to `keep` them, else an empty vector.
    fn identify_decoding(
        &self,
        name: &str,
        keep: bool,
        decode: impl FnOnce(&mut audio::SampleSink<'_>) -> Result<audio::Decoded, EngineError>,
    ) -> Result<(Identification, Vec<f32>), EngineError> {
        let mut print = self.fingerprinter.query_stream();
        let decoded = decode(&mut |samples| print.push(samples))?;
        let n_samples = decoded.samples.len();
        // Unless asked for, the samples (64 KB a second) are not held through the lookup,
        // when memory peaks.
        let samples = if keep || self.deep {
            decoded.samples
        } else {
            drop(decoded);
            Vec::new()
        };
        let started = Instant::now();
        let print = print.finish();
        let all = ReferenceFilter::all();
        let mut searched = self.search(started, print, &all, &self.match_params)?;
        self.search_deeper(&samples, &all, &mut searched)?;
        let samples = if keep { samples } else { Vec::new() };
        Ok((self.report(name, n_samples, searched)?, samples))
    }

    /// Finds every sample in mono audio at the engine rate ([`Self::sample_rate_hz`]).
    pub fn identify_samples(
        &self,
        name: &str,
        samples: &[f32],
    ) -> Result<Identification, EngineError> {
        self.identify_samples_among(name, samples, &ReferenceFilter::all())
    }

    /// Like [`Self::identify_samples`], but only references that `filter` admits are
    /// considered (the scan uses it to compare a track with new tracks only).
    pub fn identify_samples_among(
        &self,
        name: &str,
        samples: &[f32],
        filter: &ReferenceFilter,
    ) -> Result<Identification, EngineError> {
        let started = Instant::now();
        let print = self.fingerprinter.query_print(samples);
        let mut searched = self.search(started, print, filter, &self.match_params)?;
        self.search_deeper(samples, filter, &mut searched)?;
        self.report(name, samples.len(), searched)
    }

    /// Turns what a search found into the report, with the references' catalogue entries.
    fn report(
        &self,
        name: &str,
        n_samples: usize,
        searched: Searched,
    ) -> Result<Identification, EngineError> {
        let rate = f64::from(self.sample_rate_hz());
        let mut matches = Vec::with_capacity(searched.matches.len());
        for m in searched.matches {
            let info = self.store.track(m.track)?;
            matches.push(MatchReport::new(m, info, &self.match_params));
        }
        Ok(Identification {
            query: name.to_string(),
            duration_s: n_samples as f64 / rate,
            n_lookups: searched.n_lookups,
            n_hits: searched.n_hits,
            n_passes: searched.n_passes,
            timings: searched.timings,
            matches,
        })
    }

    /// Searches one fingerprinted query; `started` is when the fingerprint was begun.
    fn search(
        &self,
        started: Instant,
        mut print: QueryPrint,
        filter: &ReferenceFilter,
        mp: &MatchParams,
    ) -> Result<Searched, EngineError> {
        let fingerprint_s = started.elapsed().as_secs_f64();
        let mut clock = Instant::now();
        let (keys, query) = lookup_order(std::mem::take(&mut print.quads))?;
        let cap = self.max_postings_per_key()?;
        let budget = self.max_identify_hits;
        let (mut lookup_s, mut match_s) = (0.0, 0.0);
        let mut lap = |total: &mut f64| {
            let now = Instant::now();
            *total += (now - clock).as_secs_f64();
            clock = now;
        };
        let first = self.lookup_hits(&keys, &query, cap, filter, Some(budget), mp)?;
        lap(&mut lookup_s);
        let (candidates, n_hits, n_passes, lookups) = match first {
            hits::Collected::All(shards) => {
                let n_hits = shards.iter().map(Vec::len).sum();
                let candidates = matcher::find_candidates_sharded(shards, &query, mp);
                lap(&mut match_s);
                (candidates, n_hits, 1, 1)
            }
            // More hits than the budget: one pass per range of references, each within it
            // (see the `hits` module).
            hits::Collected::Over { passes, scope } => {
                let (mut candidates, mut n_hits, n_passes) = (Vec::new(), 0, passes.len());
                for ids in passes {
                    let pass = ReferenceFilter {
                        ids,
                        exclude: filter.exclude,
                    };
                    let hits::Collected::All(shards) =
                        self.lookup_hits(&keys, &query, cap, &pass, None, mp)?
                    else {
                        unreachable!("a lookup without a budget keeps every hit");
                    };
                    lap(&mut lookup_s);
                    n_hits += shards.iter().map(Vec::len).sum::<usize>();
                    candidates.extend(matcher::find_candidates_in_pass(shards, &query, mp, scope));
                    lap(&mut match_s);
                }
                // Joined in reference order, each reference's candidates in one pass's order:
                // all that `verify` (which takes them by reference) depends on.
                // The first lookup only counted.
                (candidates, n_hits, n_passes, n_passes + 1)
            }
        };
        let n_lookups = keys.len().saturating_mul(lookups);
        drop(keys);
        drop(query);
        let matches = self.verify(candidates, &print, mp)?;
        let verify_s = clock.elapsed().as_secs_f64();
        Ok(Searched {
            matches,
            n_lookups,
            n_hits,
            n_passes,
            timings: report::Timings {
                fingerprint_s,
                lookup_s,
                match_s,
                verify_s,
            },
        })
    }

    /// With [`Self::set_deep`]: searches `samples` again at each of [`DEEP_SPEEDS`],
    /// resampled to undo that speed and within its band of time factors, and adds what
    /// that finds to `searched` (on the query's own time and pitch), keeping the strongest
    /// match wherever two cover one stretch of the query with one reference.
    fn search_deeper(
        &self,
        samples: &[f32],
        filter: &ReferenceFilter,
        searched: &mut Searched,
    ) -> Result<(), EngineError> {
        if !self.deep || samples.is_empty() {
            return Ok(());
        }
        let rate = self.sample_rate_hz();
        for (speed, band) in DEEP_SPEEDS {
            let started = Instant::now();
            let out_rate = (rate as f32 * speed).round() as u32;
            // The rate actually used, which the match's tempo and pitch are mapped by.
            let speed = f64::from(out_rate) / f64::from(rate);
            let slowed = audio::resample_mono(samples, rate, out_rate).map_err(|source| {
                EngineError::Audio {
                    path: "the query, resampled".to_string(),
                    source,
                }
            })?;
            let fingerprinter = Fingerprinter::new(Params {
                max_time_factor: band,
                ..self.fingerprinter.params().clone()
            })?;
            let print = fingerprinter.query_print(&slowed);
            drop(slowed);
            // Within the band, tempo and pitch move together (a turntable's speed): the
            // pitch searched is what the band's time factors imply, and a match whose
            // pitch strays from its tempo's is dropped. The extra searches give chance
            // more places to line up, and this takes most of them back (chance lines of
            // whole songs at a 1.54 tempo and +5.2 semitones, say; session 20).
            let max_factor = f64::from(band) * 1.02;
            let mp = MatchParams {
                max_time_factor: max_factor,
                max_pitch_semitones: 12.0 * max_factor.log2() + DEEP_PITCH_TOLERANCE_ST,
                ..self.match_params.clone()
            };
            let mut found = self.search(started, print, filter, &mp)?;
            // And only what the peaks confirm counts: on whole songs, the hits alone of
            // one resampled search made a chance loop of significance 57 (a second of a
            // reference matched at 19 places of a song, peaks 25 nats; session 20).
            found.matches.retain(|m| {
                (m.pitch_semitones - 12.0 * m.tempo.log2()).abs() <= DEEP_PITCH_TOLERANCE_ST
                    && m.verified
                    && m.verification >= mp.min_verification
            });
            searched.n_lookups += found.n_lookups;
            searched.n_hits += found.n_hits;
            searched.n_passes += found.n_passes;
            searched.timings.add(&found.timings);
            searched
                .matches
                .extend(found.matches.into_iter().map(|m| at_own_speed(m, speed)));
        }
        let matches = std::mem::take(&mut searched.matches);
        searched.matches = matcher::finish_verified(matches, &self.match_params, true);
        Ok(())
    }

    /// Looks the query's `keys` up into [`LOOKUP_SHARDS`] sinks, keeping the hits that
    /// `filter` admits and some searched transform can explain (hits are dropped as they
    /// arrive, so memory follows the plausible hits only). With a `budget` (hits, shared by
    /// the sinks), a lookup whose hits outgrow it returns the passes that will hold them
    /// instead (`hits` module).
    /// Keys with more postings than `cap` are skipped by the store without being read.
    fn lookup_hits(
        &self,
        keys: &[u32],
        query: &[matcher::QueryQuad],
        cap: usize,
        filter: &ReferenceFilter,
        budget: Option<usize>,
        mp: &MatchParams,
    ) -> Result<hits::Collected, EngineError> {
        let max_factor = mp.max_time_factor as f32;
        let max_pitch_bins = (mp.max_pitch_semitones * mp.bins_per_semitone) as f32;
        // The store serves the lookup from several threads, into LOOKUP_SHARDS vectors
        // that the matcher takes as they are (see `Store::lookup_sharded`). Two to three
        // hits per key are typical (2.5 for a 3-minute query against 12 hours), so each
        // vector starts at its share of three rather than doubling up from nothing: the
        // buffers a doubling leaves behind stay resident (a start at two cost 32 MB of
        // peak memory there). Reserved but unused capacity is address space only.
        let shared = budget.map(|b| hits::Budget::new(b, LOOKUP_SHARDS));
        let expected = (3 * keys.len() / LOOKUP_SHARDS)
            .min(budget.map_or(usize::MAX, |b| b.div_ceil(LOOKUP_SHARDS)));
        let mut sinks: Vec<hits::HitSink> = (0..LOOKUP_SHARDS)
            .map(|_| hits::HitSink::new(shared.as_ref(), expected))
            .collect();
        let plausible = &hits::Plausible {
            query,
            range: matcher::TransformRange::new(mp),
        };
        // The hit a posting makes for query quad `i`, and whether it is admitted: in the
        // filter's range, and its time factor and pitch shift within those searched. Most
        // postings are not (69% of those visited for a 3-minute song against 10 hours),
        // at random, so the tests are combined without a branch and the sink takes the
        // verdict (`HitSink::offer`).
        let admit = |i: usize, posting: Posting| -> (Hit, bool) {
            let q = &query[i];
            let r_span = posting.span as f32 / SPAN_SCALE;
            let r_bin = posting.freq as f32 / FREQ_SCALE;
            // |ln(q.span / r_span)| <= ln(max factor), without a logarithm per posting.
            let admitted = filter.admits(posting.track)
                & (r_span > 0.0)
                & (q.span <= r_span * max_factor)
                & (q.span * max_factor >= r_span)
                & ((q.bin - r_bin).abs() <= max_pitch_bins);
            let hit = Hit {
                track: posting.track,
                query: i as u32,
                r_time: whole_frames(posting.time),
                r_bin: posting.freq,
                r_span: posting.span,
            };
            (hit, admitted)
        };
        {
            let mut visitors: Vec<_> = sinks
                .iter_mut()
                .map(|sink| {
                    move |i, posting| {
                        let (hit, admitted) = admit(i, posting);
                        sink.offer(hit, admitted, plausible);
                    }
                })
                .collect();
            let mut visitors: Vec<&mut (dyn FnMut(usize, Posting) + Send)> = visitors
                .iter_mut()
                .map(|v| v as &mut (dyn FnMut(usize, Posting) + Send))
                .collect();
            // Only the filter's range of tracks is read where the store can skip the rest
            // (a pass over a range of references).
            self.store
                .lookup_sharded_among(keys, cap, filter.ids.clone(), &mut visitors)?;
        }
        Ok(hits::collect(
            sinks,
            plausible,
            mp,
            &filter.ids,
            budget.unwrap_or(usize::MAX),
        ))
    }

    /// Checks every candidate at the level of single peaks (see `matcher::verify`) and
    /// keeps those that are significant on their hits or confirmed by their peaks.
    fn verify(
        &self,
        candidates: Vec<SampleMatch>,
        print: &QueryPrint,
        mp: &MatchParams,
    ) -> Result<Vec<SampleMatch>, EngineError> {
        let grid = verification_grid(print, mp);
        let mut candidates = candidates;
        candidates.sort_by_key(|m| m.track);
        // One read and decode of a reference's peaks serves all its candidates; tracks
        // are verified in parallel.
        let per_track: Vec<Vec<SampleMatch>> = candidates
            .chunk_by(|a, b| a.track == b.track)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|group| {
                // A store written without peaks (or a damaged list) leaves the candidates
                // unverified, so only their hits can carry them.
                let peaks = self
                    .store
                    .side_data(group[0].track)?
                    .and_then(|bytes| fingerprint::peak_list::decode(&bytes).ok());
                let mut group = group.to_vec();
                if let Some(peaks) = peaks {
                    for m in &mut group {
                        matcher::verify::verify_match(m, &peaks, &grid, mp);
                    }
                }
                Ok(group)
            })
            .collect::<Result<_, EngineError>>()?;
        let kept = per_track.into_iter().flatten().collect();
        Ok(matcher::finish_verified(kept, mp, true))
    }

    /// Postings per key above which a key is ignored at query time: a multiple of the
    /// store's mean list length, so the cut scales with the library.
    fn max_postings_per_key(&self) -> Result<usize, EngineError> {
        let mean = self.store.stats()?.mean_postings_per_key();
        Ok(((mean * COMMON_KEY_FACTOR).ceil() as usize).max(MIN_COMMON_KEY_CAP))
    }

    /// The rate of the mono signal [`Self::identify_samples`] expects.
    pub fn sample_rate_hz(&self) -> u32 {
        self.fingerprinter.params().sample_rate_hz
    }

    /// Caps the length of any audio this engine decodes (indexing, identifying, display):
    /// longer audio fails with [`audio::AudioError::TooLong`]. Decoded audio takes 64 KB
    /// per second, so a server sets this to bound what one upload can make it allocate.
    pub fn set_max_duration_s(&mut self, max_duration_s: f64) {
        self.decode.max_duration_s = max_duration_s;
    }

    /// Bounds the memory a query's hits may take at once, in MB (at least 1; default
    /// [`DEFAULT_IDENTIFY_MEMORY_MB`]). Hits grow with the query's length times the
    /// library's size; a query with more is matched in passes over ranges of references,
    /// each within the bound, which gives the same result for one more lookup of the query
    /// per pass.
    pub fn set_identify_memory_mb(&mut self, mb: usize) {
        self.set_max_identify_hits(mb.max(1).saturating_mul(HITS_PER_MB));
    }

    /// [`Self::set_identify_memory_mb`] in hits (16 bytes each; at least 1).
    pub fn set_max_identify_hits(&mut self, hits: usize) {
        self.max_identify_hits = hits.max(1);
    }

    /// Decodes audio held in memory (an upload) to the mono signal
    /// [`Self::identify_samples`] takes; `name` labels errors, `ext_hint` is the format's
    /// usual file extension if known.
    pub fn decode_bytes(
        &self,
        name: &str,
        bytes: Vec<u8>,
        ext_hint: Option<&str>,
    ) -> Result<Vec<f32>, EngineError> {
        audio::decode_bytes(bytes, ext_hint, &self.decode)
            .map(|(decoded, _)| decoded.samples)
            .map_err(named_audio_error(name))
    }

    /// Decodes a stored track's audio from the path it was indexed from (to draw it).
    pub fn decode_track(&self, id: TrackId) -> Result<Vec<f32>, EngineError> {
        let info = self
            .store
            .track(id)?
            .ok_or_else(|| EngineError::NoSuchTrack(id.to_string()))?;
        let path = Path::new(&info.path);
        audio::decode_file(path, &self.decode)
            .map(|(decoded, _)| decoded.samples)
            .map_err(audio_error(path))
    }
}

// Hits keep the reference side in the store's fixed point, so the matcher must read it
// with the scales the fingerprint wrote it with.
const _: () =
    assert!(matcher::REF_BIN_SCALE == FREQ_SCALE && matcher::REF_SPAN_SCALE == SPAN_SCALE);

/// A match found in the query resampled to play `speed` times as slow, on the query's
/// own time and pitch.
fn at_own_speed(mut m: SampleMatch, speed: f64) -> SampleMatch {
    m.tempo *= speed;
    m.pitch_semitones += 12.0 * speed.log2();
    for o in &mut m.occurrences {
        o.query_start_s /= speed;
        o.query_end_s /= speed;
    }
    m
}

/// The query quads' hash keys in ascending order, and the quads in the same order as the
/// matcher takes them. A store visits postings in key order anyway, so sorted keys cost it
/// no sorted copy of its own (23 MB for a 3-minute query), and a stable order keeps the
/// hits, and so every result, exactly as they were in the fingerprint's order.
fn lookup_order(
    quads: Vec<fingerprint::QueryQuad>,
) -> Result<(Vec<u32>, Vec<matcher::QueryQuad>), index::IndexError> {
    // Positions are packed in 32 bits, as hits keep them.
    if u32::try_from(quads.len()).is_err() {
        return Err(index::IndexError::TooManyKeys {
            n_keys: quads.len(),
        });
    }
    let mut order: Vec<u64> = quads
        .iter()
        .enumerate()
        .map(|(i, q)| (u64::from(q.hash) << 32) | i as u64)
        .collect();
    // By key, stably: equal keys keep their positions' order, as a sort of the whole
    // values would leave them.
    matcher::radix::sort_by_key(&mut order, &mut Vec::new(), |&o| o >> 32);
    let keys = order.iter().map(|&o| (o >> 32) as u32).collect();
    let query = order
        .iter()
        .map(|&o| {
            let q = &quads[(o & 0xffff_ffff) as usize];
            matcher::QueryQuad {
                time: q.time,
                bin: q.bin,
                span: q.span,
            }
        })
        .collect();
    Ok((keys, query))
}

/// The query's verification peaks as the grid `matcher::verify` looks them up in, with
/// the tolerances of `p`.
pub fn verification_grid(print: &QueryPrint, p: &MatchParams) -> matcher::verify::PeakGrid {
    let points: Vec<(f32, f32)> = print.verify_peaks.iter().map(|p| (p.time, p.bin)).collect();
    matcher::verify::PeakGrid::new(
        &points,
        print.n_frames,
        print.n_bins,
        p.verify.tolerance_frames,
        p.verify.tolerance_bins,
    )
}

/// Turns an audio error into the engine's, naming the file.
fn audio_error(path: &Path) -> impl FnOnce(audio::AudioError) -> EngineError + '_ {
    move |source| named_audio_error(&path.display().to_string())(source)
}

/// Turns an audio error into the engine's, naming the audio `name` (an upload's label).
fn named_audio_error(name: &str) -> impl FnOnce(audio::AudioError) -> EngineError + '_ {
    move |source| EngineError::Audio {
        path: name.to_string(),
        source,
    }
}

/// The key a file is catalogued under: its absolute path where it can be resolved.
pub fn path_key(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use index::{Entry, IndexError, MemStore, Posting, StoreMeta, StoreStats};

    use super::*;

    /// A store where another writer gets in at the worst moment: just before this
    /// engine's first write, it stores `competitor` (as a second indexer process would
    /// between the engine's last look and its write).
    struct RacedStore {
        inner: MemStore,
        competitor: Mutex<Option<TrackInfo>>,
    }

    impl Store for RacedStore {
        fn meta(&self) -> &StoreMeta {
            self.inner.meta()
        }
        fn put_track_with_side_data(
            &self,
            info: &TrackInfo,
            entries: &[Entry],
            side_data: &[u8],
            replaces: Option<TrackId>,
        ) -> Result<TrackId, IndexError> {
            let competitor = self.competitor.lock().expect("lock").take();
            if let Some(other) = competitor {
                self.inner
                    .put_track_with_side_data(&other, entries, side_data, None)?;
            }
            self.inner
                .put_track_with_side_data(info, entries, side_data, replaces)
        }
        fn side_data(&self, id: TrackId) -> Result<Option<Vec<u8>>, IndexError> {
            self.inner.side_data(id)
        }
        fn update_metadata(&self, id: TrackId, info: &TrackInfo) -> Result<bool, IndexError> {
            self.inner.update_metadata(id, info)
        }
        fn record_scan(
            &self,
            query: TrackId,
            examined: RangeInclusive<TrackId>,
            found: &[(TrackId, Vec<u8>)],
        ) -> Result<bool, IndexError> {
            self.inner.record_scan(query, examined, found)
        }
        fn scan_mark(&self, query: TrackId) -> Result<Option<TrackId>, IndexError> {
            self.inner.scan_mark(query)
        }
        fn relations(&self, track: Option<TrackId>) -> Result<Vec<index::Relation>, IndexError> {
            self.inner.relations(track)
        }
        fn remove_track(&self, id: TrackId) -> Result<bool, IndexError> {
            self.inner.remove_track(id)
        }
        fn track(&self, id: TrackId) -> Result<Option<TrackInfo>, IndexError> {
            self.inner.track(id)
        }
        fn tracks(&self) -> Result<Vec<(TrackId, TrackInfo)>, IndexError> {
            self.inner.tracks()
        }
        fn find_by_path(&self, path: &str) -> Result<Option<TrackId>, IndexError> {
            self.inner.find_by_path(path)
        }
        fn find_by_content(&self, hash: &str) -> Result<Option<TrackId>, IndexError> {
            self.inner.find_by_content(hash)
        }
        fn lookup(
            &self,
            keys: &[u32],
            max_postings_per_key: usize,
            visit: &mut dyn FnMut(usize, Posting),
        ) -> Result<(), IndexError> {
            self.inner.lookup(keys, max_postings_per_key, visit)
        }
        fn stats(&self) -> Result<StoreStats, IndexError> {
            self.inner.stats()
        }
    }

    /// Three seconds of a 16-bit mono WAV with two moving tones, enough for a fingerprint.
    fn write_wav(path: &Path, seed_hz: f32) {
        let rate = 16_000u32;
        let samples: Vec<u8> = (0..rate * 3)
            .flat_map(|i| {
                let t = i as f32 / rate as f32;
                let f = seed_hz * (1.0 + (t * 1.7).floor() * 0.25);
                let v = 0.4 * (std::f32::consts::TAU * f * t).sin()
                    + 0.3 * (std::f32::consts::TAU * 2.7 * f * t).sin();
                ((v * 20_000.0) as i16).to_le_bytes()
            })
            .collect();
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        for field in [16u32.to_le_bytes(), [1, 0, 1, 0], rate.to_le_bytes()] {
            b.extend_from_slice(&field);
        }
        b.extend_from_slice(&(rate * 2).to_le_bytes());
        b.extend_from_slice(&[2, 0, 16, 0]);
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(samples.len() as u32).to_le_bytes());
        b.extend_from_slice(&samples);
        std::fs::write(path, b).expect("write the test WAV");
    }

    fn raced_engine(competitor: impl FnOnce(&TrackInfo) -> TrackInfo, path: &Path) -> Engine {
        let params = Params::default();
        // What the engine will store for `path`, to build the competitor from.
        let probe = Engine::with_store(Box::new(MemStore::new(&params.describe())), params.clone())
            .expect("engine");
        let Plan::Index(pending) = probe.plan(path).expect("plan") else {
            panic!("a new file must be indexed");
        };
        let prepared = probe.prepare(path, pending).expect("prepare");
        let store = RacedStore {
            inner: MemStore::new(&params.describe()),
            competitor: Mutex::new(Some(competitor(&prepared.info))),
        };
        Engine::with_store(Box::new(store), params).expect("engine")
    }

    /// Regression: two `cratedigger index` processes over the same file failed it with
    /// "already indexed from" when the other committed it between this one's last look
    /// and its write.
    #[test]
    fn a_file_another_writer_stores_first_is_unchanged_not_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("song.wav");
        write_wav(&path, 440.0);
        let engine = raced_engine(TrackInfo::clone, &path);
        let outcome = engine.index_file(&path).expect("the race is not a failure");
        let id = engine.store().find_by_path(&path_key(&path)).expect("find");
        assert_eq!(Some(outcome), id.map(|id| IndexOutcome::Unchanged { id }));
        assert_eq!(engine.store().stats().expect("stats").n_tracks, 1);
    }

    /// The other writer stored another version of the same path: this one replaces it.
    #[test]
    fn a_path_another_writer_stores_first_with_other_bytes_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("song.wav");
        write_wav(&path, 440.0);
        let engine = raced_engine(
            |info| TrackInfo {
                content_hash: "an older version".to_string(),
                ..info.clone()
            },
            &path,
        );
        let outcome = engine.index_file(&path).expect("the race is not a failure");
        assert!(
            matches!(outcome, IndexOutcome::Replaced { .. }),
            "{outcome:?}"
        );
        let tracks = engine.store().tracks().expect("tracks");
        assert_eq!(tracks.len(), 1, "{tracks:?}");
        assert_ne!(tracks[0].1.content_hash, "an older version");
    }

    /// The same bytes under another path, stored by another writer first: a duplicate.
    #[test]
    fn bytes_another_writer_stores_first_under_another_path_are_a_duplicate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("song.wav");
        write_wav(&path, 440.0);
        let engine = raced_engine(
            |info| TrackInfo {
                path: "/elsewhere/copy.wav".to_string(),
                ..info.clone()
            },
            &path,
        );
        let outcome = engine.index_file(&path).expect("the race is not a failure");
        assert!(
            matches!(outcome, IndexOutcome::Duplicate { .. }),
            "{outcome:?}"
        );
        assert_eq!(engine.store().stats().expect("stats").n_tracks, 1);
    }
}
