//! Target 2: reading a damaged store. A small store is built, the input rewrites raw
//! values in its databases through `index::test_hooks`, then every reading call (and the
//! writes that read first: put, remove, merge, reopen) must return `Ok` or an error.
//!
//! The input is a list of operations, each:
//! - a tag byte: the database is `(tag & 0x7F) % 9` in the order of [`index::test_hooks::RawDb`]
//!   (the live main's partition is the next byte), and `tag & 0x80` deletes the key;
//! - a key byte: below 0x80 it picks one of the keys the baseline store really has (track
//!   ids, counter names, posting keys, ...); from 0x80 up, `byte - 0x80` raw key bytes
//!   follow;
//! - unless deleting, an edit of the key's current value (empty if none): a mode byte,
//!   then below 0x40 a u16 BE length and that many bytes replace the value; below 0x80
//!   a u16 BE length truncates it; below 0xC0 a u16 BE position and a u8 count of bytes
//!   overwrite it there; otherwise a u8 count of bytes are appended.
//!
//! Missing bytes at the end of the input read as zeros, so every input is valid.

use std::path::{Path, PathBuf};

use index::test_hooks::{self, RawDb};
use index::{Entry, IndexError, LmdbOptions, LmdbStore, Store, TrackId, TrackInfo};

/// What the baseline store records as its fingerprint parameters.
const PARAMS: &str = "fuzzing-store";

/// The baseline's tracks: path, content hash, posting keys. Keys are spread so that each
/// track has postings in several partitions and some keys are shared.
const TRACKS: [(&str, &str, &[u32]); 4] = [
    ("/music/a.flac", "aa", &[1, 2, 3, 500, 70_000, 0xFFFF_FFFF]),
    ("/music/b.mp3", "bb", &[2, 3, 4, 900, 70_000, 1 << 31]),
    ("/music/c.ogg", "cc", &[3, 5, 6, 12_345, 99]),
    ("/music/d.wav", "dd", &[7, 8, 500, 1 << 20]),
];

/// Names of the store's counters and meta values (ARCHITECTURE.md, `index::lmdb`).
const COUNTER_NAMES: [&str; 8] = [
    "next_track_id",
    "n_keys",
    "total_duration_us",
    "live_postings",
    "delta_postings",
    "dead_postings",
    "partition_merges",
    "partitions",
];
const META_NAMES: [&str; 2] = ["format_version", "fingerprint_params"];

/// One decoded operation of the input (see the module docs for the byte format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub db: RawDb,
    pub key: Vec<u8>,
    /// `None` deletes the key; `Some` is the new value.
    pub edit: Option<Edit>,
}

/// How an [`Op`] changes a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Replace(Vec<u8>),
    Truncate(usize),
    Overwrite { at: usize, bytes: Vec<u8> },
    Append(Vec<u8>),
}

impl Edit {
    fn apply(&self, mut value: Vec<u8>) -> Vec<u8> {
        match self {
            Edit::Replace(bytes) => bytes.clone(),
            Edit::Truncate(len) => {
                value.truncate(*len);
                value
            }
            Edit::Overwrite { at, bytes } => {
                let at = at % (value.len() + 1);
                let end = at + bytes.len();
                if value.len() < end {
                    value.resize(end, 0);
                }
                value[at..end].copy_from_slice(bytes);
                value
            }
            Edit::Append(bytes) => {
                value.extend_from_slice(bytes);
                value
            }
        }
    }
}

/// Reads bytes off the front of the input; past the end everything is zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> usize {
        usize::from(self.u8()) << 8 | usize::from(self.u8())
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// The keys of the baseline store in `db`, for key bytes below 0x80.
fn natural_keys(db: RawDb) -> Vec<Vec<u8>> {
    let ids = || (0..=TRACKS.len() as u32 + 1).map(|id| id.to_be_bytes().to_vec());
    let catalogue = |s: &str| [&[0u8][..], s.as_bytes()].concat();
    match db {
        RawDb::Meta => META_NAMES.iter().map(|n| n.as_bytes().to_vec()).collect(),
        RawDb::Counters => COUNTER_NAMES
            .iter()
            .map(|n| n.as_bytes().to_vec())
            .collect(),
        RawDb::Tracks | RawDb::Runs | RawDb::RunState | RawDb::Deleted | RawDb::Anchors => {
            ids().collect()
        }
        RawDb::Paths => TRACKS.iter().map(|t| catalogue(t.0)).collect(),
        RawDb::Contents => TRACKS.iter().map(|t| catalogue(t.1)).collect(),
        // Main holds blocks of 4,096 keys under `key >> 12`.
        RawDb::LiveMain(_) => TRACKS
            .iter()
            .flat_map(|t| t.2.iter().map(|k| (k >> 12).to_be_bytes().to_vec()))
            .collect(),
    }
}

/// Decodes the whole input into operations.
pub fn parse_ops(data: &[u8]) -> Vec<Op> {
    let mut r = Reader(data);
    let mut ops = Vec::new();
    while !r.0.is_empty() {
        let tag = r.u8();
        let db = match (tag & 0x7F) % 10 {
            0 => RawDb::Meta,
            1 => RawDb::Tracks,
            2 => RawDb::Paths,
            3 => RawDb::Contents,
            4 => RawDb::Runs,
            5 => RawDb::RunState,
            6 => RawDb::Deleted,
            7 => RawDb::Counters,
            8 => RawDb::Anchors,
            _ => RawDb::LiveMain(usize::from(r.u8())),
        };
        let key_byte = r.u8();
        let key = if key_byte < 0x80 {
            let keys = natural_keys(db);
            keys[usize::from(key_byte) % keys.len()].clone()
        } else {
            r.bytes(usize::from(key_byte - 0x80))
        };
        let edit = if tag & 0x80 != 0 {
            None
        } else {
            Some(match r.u8() {
                0x00..0x40 => {
                    let n = r.u16();
                    Edit::Replace(r.bytes(n))
                }
                0x40..0x80 => Edit::Truncate(r.u16()),
                0x80..0xC0 => {
                    let at = r.u16();
                    let n = usize::from(r.u8());
                    Edit::Overwrite {
                        at,
                        bytes: r.bytes(n),
                    }
                }
                _ => {
                    let n = usize::from(r.u8());
                    Edit::Append(r.bytes(n))
                }
            })
        };
        ops.push(Op { db, key, edit });
    }
    ops
}

fn info(path: &str, hash: &str) -> TrackInfo {
    TrackInfo {
        path: path.to_owned(),
        content_hash: hash.to_owned(),
        duration_s: 12.5,
        title: Some("title".to_owned()),
        artist: None,
        album: None,
        year: Some(1971),
        musicbrainz_recording_id: None,
        musicbrainz_release_id: None,
        n_postings: 0,
        indexed_unix_s: 0,
    }
}

fn entries(keys: &[u32]) -> Vec<Entry> {
    keys.iter()
        .enumerate()
        .map(|(i, &k)| (k, i as u32 * 7, 100 + i as u16, 16 * (1 + i as u16)))
        .collect()
}

/// A folder for the store, in memory where the system has one: the target commits a few
/// transactions per input, and an fsync to a real disk would cost more than the rest.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let parent: PathBuf = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("cratedigger-fuzz-store-")
        .tempdir_in(parent)
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary folder for the fuzzed store")
}

/// The baseline: two tracks merged into main, then a removal (a tombstone in main), then
/// two tracks left as runs, one of them removed again. Every database has values.
fn build_baseline(dir: &Path) -> LmdbStore {
    // Never merge on its own, so the layout is exactly what the steps below make.
    let options = LmdbOptions::default()
        .min_delta_postings(u64::MAX)
        .max_delta_tracks(u64::MAX);
    let store = LmdbStore::open_with_options(dir, PARAMS, options).expect("create the baseline");
    let mut ids = Vec::new();
    for (i, (path, hash, keys)) in TRACKS.iter().enumerate() {
        ids.push(
            store
                .put_track(&info(path, hash), &entries(keys), None)
                .expect("baseline put"),
        );
        if i == 1 {
            store.compact().expect("baseline merge");
            store.remove_track(ids[0]).expect("baseline removal");
            let again = store
                .put_track(&info(path, "a-again"), &entries(&[1, 2]), Some(ids[1]))
                .expect("baseline replace");
            ids[1] = again;
        }
    }
    store.remove_track(ids[3]).expect("baseline removal");
    store
}

/// Checks a result: `Ok` passes, and an error must at least say something.
fn check<T>(result: Result<T, IndexError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            assert!(!error.to_string().is_empty(), "an error without a message");
            None
        }
    }
}

/// Every reading call of the `Store` API, with the contracts a caller relies on.
fn read_everything(store: &LmdbStore) {
    check(store.stats());
    if let Some(tracks) = check(store.tracks()) {
        assert!(
            tracks.windows(2).all(|w| w[0].0 < w[1].0),
            "tracks() out of id order"
        );
    }
    for id in 0..=TRACKS.len() as TrackId + 1 {
        check(store.track(id));
    }
    for (path, hash, _) in TRACKS {
        check(store.find_by_path(path));
        check(store.find_by_content(hash));
    }
    let mut keys: Vec<u32> = TRACKS.iter().flat_map(|t| t.2.iter().copied()).collect();
    keys.extend([0, 42, u32::MAX - 1]);
    for cap in [0, 1, 3, usize::MAX] {
        let mut last_key = None;
        check(store.lookup(&keys, cap, &mut |i, _posting| {
            assert!(i < keys.len(), "lookup visited index {i} of {}", keys.len());
            assert!(
                last_key.is_none_or(|k| k <= keys[i]),
                "lookup visits out of key order"
            );
            last_key = Some(keys[i]);
        }));
    }
}

/// Target body: see the module docs for the input format.
pub fn read_store(data: &[u8]) {
    let dir = scratch_dir();
    let store = build_baseline(dir.path());
    for op in parse_ops(data) {
        // A damaged store may refuse even the rewrite (the live main's partition comes
        // from the counters); that is an error like any other.
        let value = match &op.edit {
            None => None,
            Some(edit) => {
                let Some(current) = check(test_hooks::get_raw(&store, op.db, &op.key)) else {
                    continue;
                };
                Some(edit.apply(current.unwrap_or_default()))
            }
        };
        check(test_hooks::set_raw(
            &store,
            op.db,
            &op.key,
            value.as_deref(),
        ));
    }
    read_everything(&store);
    check(test_hooks::dump_postings(&store));
    // The writes read what they change, so they meet the damage too.
    check(store.put_track(&info("/music/new.flac", "ee"), &entries(&[2, 9, 500]), None));
    for id in 1..=TRACKS.len() as TrackId + 1 {
        check(store.remove_track(id));
    }
    check(store.compact());
    read_everything(&store);
    drop(store);
    // Opening checks the format metadata, which the operations may have damaged.
    if let Some(reader) = check(LmdbStore::open_read_only(dir.path(), PARAMS)) {
        read_everything(&reader);
        drop(reader);
    }
    if let Some(writer) = check(LmdbStore::open(dir.path(), PARAMS)) {
        read_everything(&writer);
    }
}

/// Inputs that start the fuzzer on every database: each natural key of each database
/// truncated, overwritten with a 0xFF byte, and deleted.
pub fn store_seeds() -> Vec<Vec<u8>> {
    let dbs = [
        (0u8, None),
        (1, None),
        (2, None),
        (3, None),
        (4, None),
        (5, None),
        (6, None),
        (7, None),
        (8, Some(0u8)),
        (8, Some(5)),
    ];
    let mut seeds = Vec::new();
    for (tag, partition) in dbs {
        let db_bytes = |tag: u8| {
            let mut v = vec![tag];
            v.extend(partition);
            v
        };
        for key in 0..4u8 {
            for edit in [&[0x40, 0, 3][..], &[0x80, 0, 1, 1, 0xFF][..]] {
                let mut seed = db_bytes(tag);
                seed.push(key);
                seed.extend_from_slice(edit);
                seeds.push(seed);
            }
            let mut delete = db_bytes(tag | 0x80);
            delete.push(key);
            seeds.push(delete);
        }
    }
    seeds
}
