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

mod report;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use fingerprint::{FREQ_SCALE, Fingerprinter, Params, SPAN_SCALE};
use index::{LmdbStore, Store, TrackId, TrackInfo};
use matcher::{Hit, MatchParams};
use rayon::prelude::*;

pub use report::{Identification, MatchKind, MatchReport, OccurrenceReport};
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
}

/// A key is "common" above this many times the mean postings per key (BENCHMARKS.md).
const COMMON_KEY_FACTOR: f64 = 6.0;
/// ...but never below this many postings.
const MIN_COMMON_KEY_CAP: usize = 20;

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
}

/// The cratedigger engine over one store.
pub struct Engine {
    store: Box<dyn Store>,
    fingerprinter: Fingerprinter,
    match_params: MatchParams,
    decode: audio::DecodeOptions,
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
        })
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
                    Step::Outcome(outcome) => Ok(outcome),
                    Step::Ready(prepared) => self.commit(*prepared),
                });
                match result {
                    Ok(outcome) => {
                        summary.count(&outcome);
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
            Plan::Index(pending) => self.commit(self.prepare(path, pending)?),
        }
    }

    /// Decides from the content hash alone whether a file needs decoding.
    fn plan(&self, path: &Path) -> Result<Plan, EngineError> {
        let hash_hex = hex(&audio::content_hash(path).map_err(audio_error(path))?);
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
        }))
    }

    fn prepare(&self, path: &Path, pending: Pending) -> Result<Prepared, EngineError> {
        let Pending {
            key,
            hash_hex,
            replaces,
        } = pending;
        let (decoded, tags) = audio::decode_file(path, &self.decode).map_err(audio_error(path))?;
        let quads = self.fingerprinter.reference(&decoded.samples);
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
        Ok(Prepared {
            info,
            entries,
            replaces,
        })
    }

    fn commit(&self, p: Prepared) -> Result<IndexOutcome, EngineError> {
        // Two files with the same bytes may both have been prepared in one run; the
        // writer stores the first only.
        if let Some(of) = self.store.find_by_content(&p.info.content_hash)? {
            return Ok(IndexOutcome::Duplicate { of });
        }
        let duration_s = p.info.duration_s;
        let id = match self.store.put_track(&p.info, &p.entries, p.replaces) {
            Ok(id) => id,
            Err(
                error @ (index::IndexError::ContentTaken { existing, .. }
                | index::IndexError::PathTaken { existing, .. }),
            ) => return self.stored_meanwhile(&p.info, existing).ok_or(error.into()),
            Err(error) => return Err(error.into()),
        };
        Ok(match p.replaces {
            Some(old) => IndexOutcome::Replaced {
                old,
                id,
                duration_s,
            },
            None => IndexOutcome::Added { id, duration_s },
        })
    }

    /// When another process sharing the store (a Redis Cluster) stored this very file
    /// between `plan` and `commit`, what it stored is what this one would have: report
    /// that instead of the conflict. `None` if `existing` is something else.
    fn stored_meanwhile(&self, info: &TrackInfo, existing: TrackId) -> Option<IndexOutcome> {
        let stored = self.store.track(existing).ok()??;
        if stored.content_hash != info.content_hash {
            return None;
        }
        Some(if stored.path == info.path {
            IndexOutcome::Unchanged { id: existing }
        } else {
            IndexOutcome::Duplicate { of: existing }
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
        let (decoded, _) = audio::decode_file(path, &self.decode).map_err(audio_error(path))?;
        self.identify_samples(&path.display().to_string(), &decoded.samples)
    }

    /// Finds every sample in mono audio at the engine rate ([`Self::sample_rate_hz`]).
    pub fn identify_samples(
        &self,
        name: &str,
        samples: &[f32],
    ) -> Result<Identification, EngineError> {
        let started = Instant::now();
        let rate = self.fingerprinter.params().sample_rate_hz as f64;
        let quads = self.fingerprinter.query(samples);
        let keys: Vec<u32> = quads.iter().map(|q| q.hash).collect();
        let fingerprint_s = started.elapsed().as_secs_f64();

        // Hits that no searched transform can explain are dropped as they arrive, so
        // memory follows the plausible hits only. Keys with more postings than the
        // stop-word cap are skipped by the store without being read.
        let mp = &self.match_params;
        let max_log_factor = mp.max_time_factor.ln() as f32;
        let max_pitch_bins = (mp.max_pitch_semitones * mp.bins_per_semitone) as f32;
        let cap = self.max_postings_per_key()?;
        let mut hits: Vec<Hit> = Vec::new();
        self.store.lookup(&keys, cap, &mut |i, posting| {
            let q = &quads[i];
            let r_span = posting.span as f32 / SPAN_SCALE;
            let r_bin = posting.freq as f32 / FREQ_SCALE;
            if r_span <= 0.0
                || (q.span / r_span).ln().abs() > max_log_factor
                || (q.bin - r_bin).abs() > max_pitch_bins
            {
                return;
            }
            hits.push(Hit {
                track: posting.track,
                q_time: q.time,
                q_bin: q.bin,
                q_span: q.span,
                r_time: posting.time as f32,
                r_bin,
                r_span,
            });
        })?;
        let lookup_s = started.elapsed().as_secs_f64() - fingerprint_s;
        let n_hits = hits.len();
        let found = matcher::find_matches(hits, &self.match_params);
        let match_s = started.elapsed().as_secs_f64() - fingerprint_s - lookup_s;
        let mut matches = Vec::with_capacity(found.len());
        for m in found {
            let info = self.store.track(m.track)?;
            matches.push(MatchReport::new(m, info));
        }
        Ok(Identification {
            query: name.to_string(),
            duration_s: samples.len() as f64 / rate,
            n_lookups: keys.len(),
            n_hits,
            timings: report::Timings {
                fingerprint_s,
                lookup_s,
                match_s,
            },
            matches,
        })
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
}

/// Turns an audio error into the engine's, naming the file.
fn audio_error(path: &Path) -> impl FnOnce(audio::AudioError) -> EngineError + '_ {
    move |source| EngineError::Audio {
        path: path.display().to_string(),
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
