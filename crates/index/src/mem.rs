//! In-memory [`Store`] for tests and synthetic benchmarks; same semantics as the LMDB store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{PoisonError, RwLock};

use std::ops::RangeInclusive;

use crate::codec::{
    duration_us, merged_metadata, prepare_entries, sort_queries, validate_scan, validate_side_data,
    validate_track_info,
};
use crate::{
    Entry, FORMAT_VERSION, IndexError, Posting, Relation, Store, StoreMeta, StoreStats, TrackId,
    TrackInfo,
};

/// A [`Store`] held entirely in memory behind one reader-writer lock.
///
/// Lookups hold the read lock while they call `visit`, so `visit` must not write to the
/// same store.
#[derive(Debug)]
pub struct MemStore {
    meta: StoreMeta,
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Postings per key, each list sorted ascending.
    postings: BTreeMap<u32, Vec<Posting>>,
    tracks: BTreeMap<TrackId, TrackInfo>,
    /// The distinct keys of each track, so removal touches only those lists.
    track_keys: HashMap<TrackId, Vec<u32>>,
    paths: HashMap<String, TrackId>,
    contents: HashMap<String, TrackId>,
    /// Held as u64 so "all u32 ids used" is representable.
    next_track_id: u64,
    n_postings: u64,
    total_duration_us: u64,
    /// Relation payloads by (query, reference).
    relations: BTreeMap<(TrackId, TrackId), Vec<u8>>,
    scan_marks: HashMap<TrackId, TrackId>,
    side_data: HashMap<TrackId, Vec<u8>>,
}

impl MemStore {
    /// Creates an empty store built "with" the given fingerprint parameters.
    pub fn new(fingerprint_params: &str) -> Self {
        Self {
            meta: StoreMeta {
                format_version: FORMAT_VERSION,
                fingerprint_params: fingerprint_params.to_owned(),
            },
            inner: RwLock::new(Inner {
                postings: BTreeMap::new(),
                tracks: BTreeMap::new(),
                track_keys: HashMap::new(),
                paths: HashMap::new(),
                contents: HashMap::new(),
                next_track_id: 1,
                n_postings: 0,
                total_duration_us: 0,
                relations: BTreeMap::new(),
                scan_marks: HashMap::new(),
                side_data: HashMap::new(),
            }),
        }
    }
}

impl Inner {
    fn remove(&mut self, id: TrackId) -> bool {
        let Some(info) = self.tracks.remove(&id) else {
            return false;
        };
        for key in self.track_keys.remove(&id).unwrap_or_default() {
            if let Some(list) = self.postings.get_mut(&key) {
                let before = list.len();
                list.retain(|posting| posting.track != id);
                self.n_postings -= (before - list.len()) as u64;
                if list.is_empty() {
                    self.postings.remove(&key);
                }
            }
        }
        if self.paths.get(&info.path) == Some(&id) {
            self.paths.remove(&info.path);
        }
        if self.contents.get(&info.content_hash) == Some(&id) {
            self.contents.remove(&info.content_hash);
        }
        self.total_duration_us = self
            .total_duration_us
            .saturating_sub(duration_us(info.duration_s));
        self.relations
            .retain(|&(query, reference), _| query != id && reference != id);
        self.scan_marks.remove(&id);
        self.side_data.remove(&id);
        true
    }

    /// Finds a conflicting owner of a path or content hash, ignoring the track being replaced.
    fn conflict(
        map: &HashMap<String, TrackId>,
        value: &str,
        replaces: Option<TrackId>,
    ) -> Option<TrackId> {
        if value.is_empty() {
            return None;
        }
        map.get(value).copied().filter(|&id| Some(id) != replaces)
    }
}

impl Store for MemStore {
    fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    fn put_track_with_side_data(
        &self,
        info: &TrackInfo,
        entries: &[Entry],
        side_data: &[u8],
        replaces: Option<TrackId>,
    ) -> Result<TrackId, IndexError> {
        validate_track_info(info)?;
        validate_side_data(side_data)?;
        // A panic cannot leave the maps half-updated, because every check happens before the
        // first mutation; so a poisoned lock still guards consistent data.
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);

        // Check everything before mutating anything, which is what makes this atomic.
        if let Some(old) = replaces
            && !inner.tracks.contains_key(&old)
        {
            return Err(IndexError::UnknownTrack { id: old });
        }
        if let Some(existing) = Inner::conflict(&inner.paths, &info.path, replaces) {
            return Err(IndexError::PathTaken {
                path: info.path.clone(),
                existing,
            });
        }
        if let Some(existing) = Inner::conflict(&inner.contents, &info.content_hash, replaces) {
            return Err(IndexError::ContentTaken {
                content_hash: info.content_hash.clone(),
                existing,
            });
        }
        let id = TrackId::try_from(inner.next_track_id).map_err(|_| IndexError::IdsExhausted)?;

        if let Some(old) = replaces {
            inner.remove(old);
        }
        let prepared = prepare_entries(id, entries);
        let mut keys = Vec::new();
        for &(key, posting) in &prepared {
            // New track ids are the largest so far, so pushing keeps each list sorted.
            inner.postings.entry(key).or_default().push(posting);
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        inner.n_postings += prepared.len() as u64;
        inner.track_keys.insert(id, keys);
        let mut stored = info.clone();
        stored.n_postings = prepared.len() as u64;
        if !stored.path.is_empty() {
            inner.paths.insert(stored.path.clone(), id);
        }
        if !stored.content_hash.is_empty() {
            inner.contents.insert(stored.content_hash.clone(), id);
        }
        inner.total_duration_us += duration_us(stored.duration_s);
        inner.tracks.insert(id, stored);
        inner.side_data.insert(id, side_data.to_vec());
        inner.next_track_id += 1;
        Ok(id)
    }

    fn side_data(&self, id: TrackId) -> Result<Option<Vec<u8>>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.side_data.get(&id).cloned())
    }

    fn remove_track(&self, id: TrackId) -> Result<bool, IndexError> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.remove(id))
    }

    fn track(&self, id: TrackId) -> Result<Option<TrackInfo>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.tracks.get(&id).cloned())
    }

    fn tracks(&self) -> Result<Vec<(TrackId, TrackInfo)>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner
            .tracks
            .iter()
            .map(|(&id, info)| (id, info.clone()))
            .collect())
    }

    fn find_by_path(&self, path: &str) -> Result<Option<TrackId>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.paths.get(path).copied())
    }

    fn find_by_content(&self, content_hash_hex: &str) -> Result<Option<TrackId>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.contents.get(content_hash_hex).copied())
    }

    fn lookup(
        &self,
        keys: &[u32],
        max_postings_per_key: usize,
        visit: &mut dyn FnMut(usize, Posting),
    ) -> Result<(), IndexError> {
        let queries = sort_queries(keys)?;
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        for group in queries.groups() {
            let Some(list) = inner.postings.get(&group.key()) else {
                continue;
            };
            if list.len() > max_postings_per_key {
                continue;
            }
            group.visit(list, &mut *visit);
        }
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(StoreStats {
            n_tracks: inner.tracks.len() as u64,
            n_postings: inner.n_postings,
            total_duration_s: inner.total_duration_us as f64 / 1e6,
            bytes_on_disk: 0,
            n_keys: inner.postings.len() as u64,
        })
    }

    fn update_metadata(&self, id: TrackId, info: &TrackInfo) -> Result<bool, IndexError> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Some(stored) = inner.tracks.get_mut(&id) else {
            return Ok(false);
        };
        *stored = merged_metadata(stored, info);
        Ok(true)
    }

    fn record_scan(
        &self,
        query: TrackId,
        examined: RangeInclusive<TrackId>,
        found: &[(TrackId, Vec<u8>)],
    ) -> Result<bool, IndexError> {
        validate_scan(query, &examined, found)?;
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if !inner.tracks.contains_key(&query) {
            return Ok(false);
        }
        let stale: Vec<(TrackId, TrackId)> = inner
            .relations
            .range((query, *examined.start())..=(query, *examined.end()))
            .map(|(&pair, _)| pair)
            .collect();
        for pair in stale {
            inner.relations.remove(&pair);
        }
        for (reference, payload) in found {
            if inner.tracks.contains_key(reference) {
                inner.relations.insert((query, *reference), payload.clone());
            }
        }
        let mark = inner.scan_marks.entry(query).or_insert(*examined.end());
        *mark = (*mark).max(*examined.end());
        Ok(true)
    }

    fn scan_mark(&self, query: TrackId) -> Result<Option<TrackId>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.scan_marks.get(&query).copied())
    }

    fn relations(&self, track: Option<TrackId>) -> Result<Vec<Relation>, IndexError> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(inner
            .relations
            .iter()
            .filter(|&(&(query, reference), _)| {
                track.is_none_or(|track| query == track || reference == track)
            })
            .map(|(&(query, reference), payload)| Relation {
                query,
                reference,
                payload: payload.clone(),
            })
            .collect())
    }
}
