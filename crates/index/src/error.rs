//! The crate's single error type; each variant says what the caller should do about it.

use std::path::PathBuf;

use crate::TrackId;

/// Everything that can go wrong in a [`crate::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The store was written by another layout version or with other fingerprint parameters.
    #[error(
        "the store at {dir} was built with {found}, but this build needs {expected}; \
         its postings cannot be matched against, so rebuild it (delete the directory and \
         index again) or use the cratedigger build and settings that created it"
    )]
    Incompatible {
        /// The store directory.
        dir: PathBuf,
        /// What the store was built with.
        found: String,
        /// What the running engine requires.
        expected: String,
    },

    /// A read-only open found no store.
    #[error(
        "no cratedigger store at {dir}; index some audio first, or point CRATEDIGGER_DB \
         at an existing store"
    )]
    NotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },

    /// The same store directory is already open in this process.
    #[error(
        "the store at {dir} is already open in this process; share the existing handle \
         (stores are Send + Sync) instead of opening it twice"
    )]
    AlreadyOpen {
        /// The store directory.
        dir: PathBuf,
    },

    /// Another process is compacting the store ([`crate::LmdbStore::compact_in_place`]).
    #[error(
        "the store at {dir} is being compacted by another process; wait for it to finish \
         (`cratedigger compact`) and try again"
    )]
    Compacting {
        /// The store directory.
        dir: PathBuf,
    },

    /// Compaction needs the store to itself, and other processes have it open.
    #[error(
        "other processes have the store at {dir} open (a server, an index or identify run); \
         stop them and compact again"
    )]
    InUse {
        /// The store directory.
        dir: PathBuf,
    },

    /// A write was attempted through a read-only handle.
    #[error("the store was opened read-only; open it read-write to add or remove tracks")]
    ReadOnly,

    /// Another track is already indexed from this path.
    #[error(
        "track {existing} is already indexed from {path:?}; pass `replaces: Some({existing})` \
         to re-index it, or remove it first"
    )]
    PathTaken {
        /// The conflicting path.
        path: String,
        /// The track that already has it.
        existing: TrackId,
    },

    /// Another track already has this content hash.
    #[error(
        "track {existing} already has content hash {content_hash}; the file is a duplicate, \
         so skip it or pass `replaces: Some({existing})` to move the entry to the new path"
    )]
    ContentTaken {
        /// The conflicting content hash.
        content_hash: String,
        /// The track that already has it.
        existing: TrackId,
    },

    /// `replaces` named a track that is not in the store.
    #[error(
        "track {id} does not exist (another process may have removed it); look the track \
         up again and retry"
    )]
    UnknownTrack {
        /// The missing track.
        id: TrackId,
    },

    /// The catalogue entry cannot be stored as given.
    #[error("invalid track info: {reason}; fix the caller")]
    InvalidTrack {
        /// What is wrong with it.
        reason: String,
    },

    /// A scan result cannot be stored as given.
    #[error("invalid scan result: {reason}; fix the caller")]
    InvalidRelation {
        /// What is wrong with it.
        reason: String,
    },

    /// Every track id has been handed out once.
    #[error("the store has used up all track ids; rebuild it to start numbering afresh")]
    IdsExhausted,

    /// More keys were passed to one lookup than a lookup can index.
    #[error("a lookup got {n_keys} keys, more than a lookup can index; split it into batches")]
    TooManyKeys {
        /// How many keys were passed.
        n_keys: usize,
    },

    /// The store's data is damaged or not a cratedigger store.
    #[error("the store at {dir} is corrupt ({what}); delete the directory and index again")]
    Corrupt {
        /// The store directory.
        dir: PathBuf,
        /// What was found to be wrong.
        what: String,
    },

    /// The store has filled the space reserved for it.
    #[error(
        "the store at {dir} is full (its memory map limit was reached); free disk space \
         or split the library into several stores"
    )]
    Full {
        /// The store directory.
        dir: PathBuf,
    },

    /// The store directory could not be created or read.
    #[error(
        "cannot access the store directory {dir}: {source}; check that it exists and is writable"
    )]
    Io {
        /// The store directory.
        dir: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },

    /// The storage backend failed for a reason not covered above.
    #[error("the store at {dir} failed while {doing}: {reason}")]
    Backend {
        /// The store directory (empty for backends without one).
        dir: PathBuf,
        /// What the store was doing.
        doing: &'static str,
        /// The backend's own error, with what to do about it. Part of the message, and
        /// not also a `source()`, so that a caller printing the error's chain does not
        /// say it twice.
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
}
