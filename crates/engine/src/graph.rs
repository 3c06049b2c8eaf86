//! The sample graph: stored scan relations turned into edges between catalogued tracks,
//! with the direction (who sampled whom) decided from release years at read time, plain
//! sentences describing an edge, and exports (JSON, CSV, GraphML, Graphviz DOT).
//!
//! Audio says only that two recordings share material. The matcher's query/reference roles
//! say which recording was searched, not which came first, so they are never used for
//! direction: the later release samples the earlier one; the same year or a missing year
//! leaves the edge undirected ("shares material with").

mod export;

use std::collections::BTreeMap;
use std::path::Path;

use index::{Relation, TrackId, TrackInfo};
use serde::Serialize;

use crate::scan::{FoundMatch, Payload, RelationKind};
use crate::{Engine, EngineError, MatchKind};

pub use export::{ExportFormat, export};

/// A catalogued track as the graph shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub id: TrackId,
    pub title: Option<String>,
    pub artist: Option<String>,
    pub album: Option<String>,
    pub year: Option<i32>,
    pub musicbrainz_recording_id: Option<String>,
    pub musicbrainz_release_id: Option<String>,
    pub path: String,
    pub duration_s: f64,
}

impl Node {
    fn new(id: TrackId, t: TrackInfo) -> Self {
        Self {
            id,
            title: t.title,
            artist: t.artist,
            album: t.album,
            year: t.year,
            musicbrainz_recording_id: t.musicbrainz_recording_id,
            musicbrainz_release_id: t.musicbrainz_release_id,
            path: t.path,
            duration_s: t.duration_s,
        }
    }

    /// The title, else the file name: what a sentence calls the track.
    pub fn name(&self) -> String {
        self.title.clone().unwrap_or_else(|| {
            Path::new(&self.path)
                .file_name()
                .map_or_else(|| self.path.clone(), |n| n.to_string_lossy().into_owned())
        })
    }

    /// The name with artist and year when known: "Runaway (Kanye West, 2010)".
    pub fn full_name(&self) -> String {
        let mut extra: Vec<String> = Vec::new();
        extra.extend(self.artist.clone());
        extra.extend(self.year.map(|y| y.to_string()));
        if extra.is_empty() {
            self.name()
        } else {
            format!("{} ({})", self.name(), extra.join(", "))
        }
    }
}

/// Who sampled whom, as far as release years tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// `from` was released after `to`, so `from` samples `to`.
    Directed,
    /// Both were released the same year: either may have sampled the other.
    SameYear,
    /// At least one release year is unknown.
    UnknownYear,
}

/// Where shared material sits in both tracks of an edge, once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeSegment {
    pub from_start_s: f64,
    pub from_end_s: f64,
    pub to_start_s: f64,
    pub to_end_s: f64,
}

/// A relation between two tracks, shown once however many ways the scan found it.
///
/// For a [`Direction::Directed`] edge `from` samples `to`; otherwise `from` is the track
/// the question was about (or, in [`Engine::graph`], the one searched in the surest
/// finding). Factors describe `to`'s material as it plays inside `from`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    pub from: TrackId,
    pub to: TrackId,
    pub kind: RelationKind,
    pub direction: Direction,
    /// Span of the material in `from`: first occurrence's start to last one's end.
    pub from_start_s: f64,
    pub from_end_s: f64,
    /// Span of the material in `to`.
    pub to_start_s: f64,
    pub to_end_s: f64,
    /// Seconds of `to` per second of `from`: 0.87 means `to`'s material plays slowed to
    /// 0.87x in `from`.
    pub tempo: f64,
    /// Pitch of `to`'s material in `from`, semitones.
    pub pitch_semitones: f64,
    /// Set when tempo and pitch moved together, as on a turntable.
    pub speed: Option<f64>,
    pub transform: MatchKind,
    /// Occurrences of the material found in the track that was searched (a loop counts
    /// once per repetition when the sampling track was the one searched).
    pub loop_count: usize,
    pub occurrences: Vec<EdgeSegment>,
    /// Estimated probability that the shared material is real (0-1).
    pub score: f64,
    pub significance: f64,
    /// Whether each track was found in the other (both scan orientations agreed).
    pub found_both_ways: bool,
}

impl Edge {
    /// The edge from `m`, a match of reference `r` found inside query `q`, seen from
    /// `from` (which is `q` or `r`).
    fn from_match(m: &FoundMatch, q: TrackId, r: TrackId, from: TrackId) -> Self {
        let occurrences = m.occurrences.iter().map(|o| EdgeSegment {
            from_start_s: o.query_start_s,
            from_end_s: o.query_end_s,
            to_start_s: o.ref_start_s,
            to_end_s: o.ref_end_s,
        });
        let edge = Self {
            from: q,
            to: r,
            kind: RelationKind::Sample,
            direction: Direction::UnknownYear,
            from_start_s: m.query_start_s,
            from_end_s: m.query_end_s,
            to_start_s: m.ref_start_s,
            to_end_s: m.ref_end_s,
            tempo: m.tempo,
            pitch_semitones: m.pitch_semitones,
            speed: m.speed,
            transform: m.transform,
            loop_count: m.loop_count,
            occurrences: occurrences.collect(),
            score: m.score,
            significance: m.significance,
            found_both_ways: false,
        };
        if from == q { edge } else { edge.reversed() }
    }

    /// The same relation seen from the other track: segments swap, factors invert.
    pub fn reversed(&self) -> Self {
        let mut occurrences: Vec<EdgeSegment> = self
            .occurrences
            .iter()
            .map(|o| EdgeSegment {
                from_start_s: o.to_start_s,
                from_end_s: o.to_end_s,
                to_start_s: o.from_start_s,
                to_end_s: o.from_end_s,
            })
            .collect();
        occurrences.sort_by(|a, b| a.from_start_s.total_cmp(&b.from_start_s));
        Self {
            from: self.to,
            to: self.from,
            from_start_s: self.to_start_s,
            from_end_s: self.to_end_s,
            to_start_s: self.from_start_s,
            to_end_s: self.from_end_s,
            tempo: 1.0 / self.tempo,
            pitch_semitones: -self.pitch_semitones,
            speed: self.speed.map(|s| 1.0 / s),
            occurrences,
            ..self.clone()
        }
    }

    /// The other end of the edge from `id`.
    pub fn other(&self, id: TrackId) -> TrackId {
        if self.from == id { self.to } else { self.from }
    }
}

/// The whole sample graph.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    /// Every catalogued track, in id order (tracks without relations included).
    pub nodes: Vec<Node>,
    /// One edge per related pair, in (from, to) order.
    pub edges: Vec<Edge>,
}

impl Graph {
    /// The node with this id.
    pub fn node(&self, id: TrackId) -> Option<&Node> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Everything known about one track's relations, each edge seen from that track where
/// direction allows.
#[derive(Clone, Debug, Serialize)]
pub struct TrackRelations {
    pub track: Node,
    /// Earlier tracks this one samples (`from` is this track).
    pub samples: Vec<Edge>,
    /// Later tracks that sample this one (`to` is this track).
    pub sampled_by: Vec<Edge>,
    /// Shared material whose direction years cannot tell (`from` is this track).
    pub shares_material: Vec<Edge>,
    /// Near-exact copies of the same recording (`from` is this track).
    pub duplicates: Vec<Edge>,
    /// The other tracks named by these edges, in id order.
    pub others: Vec<Node>,
}

impl TrackRelations {
    /// The node of a track named by one of the edges.
    pub fn node(&self, id: TrackId) -> Option<&Node> {
        if id == self.track.id {
            return Some(&self.track);
        }
        self.others.iter().find(|n| n.id == id)
    }
}

/// Builds one edge per unordered pair from the stored relations; relations whose payload
/// cannot be read, or whose tracks are not in `years`, are skipped.
fn edges(relations: &[Relation], years: &BTreeMap<TrackId, Option<i32>>) -> Vec<Edge> {
    // (low id, high id) -> (payload of low-in-high, payload of high-in-low)
    type Pair = (Option<Payload>, Option<Payload>);
    let mut pairs: BTreeMap<(TrackId, TrackId), Pair> = BTreeMap::new();
    for r in relations {
        let Some(p) = Payload::decode(&r.payload) else {
            continue;
        };
        if !years.contains_key(&r.query) || !years.contains_key(&r.reference) {
            continue;
        }
        let key = (r.query.min(r.reference), r.query.max(r.reference));
        let slot = pairs.entry(key).or_default();
        if r.query == key.0 {
            slot.0 = Some(p);
        } else {
            slot.1 = Some(p);
        }
    }
    let mut out = Vec::with_capacity(pairs.len());
    for ((lo, hi), (lo_searched, hi_searched)) in pairs {
        let year = |id: TrackId| years.get(&id).copied().flatten();
        let (direction, sampler) = match (year(lo), year(hi)) {
            (Some(a), Some(b)) if a > b => (Direction::Directed, Some(lo)),
            (Some(a), Some(b)) if a < b => (Direction::Directed, Some(hi)),
            (Some(_), Some(_)) => (Direction::SameYear, None),
            _ => (Direction::UnknownYear, None),
        };
        let found_both_ways = lo_searched.is_some() && hi_searched.is_some();
        let kind = if [&lo_searched, &hi_searched].iter().any(|p| {
            p.as_ref()
                .is_some_and(|p| p.kind == RelationKind::Duplicate)
        }) {
            RelationKind::Duplicate
        } else {
            RelationKind::Sample
        };
        // The finding to show: with a direction, the one where the sampling track was
        // searched (its loops are counted there); else the surer one.
        let searched = [(lo, hi, &lo_searched), (hi, lo, &hi_searched)];
        let chosen = match sampler {
            Some(s) => searched
                .iter()
                .find(|(q, _, p)| *q == s && p.is_some())
                .or_else(|| searched.iter().find(|(_, _, p)| p.is_some())),
            None => searched
                .iter()
                .filter(|(_, _, p)| p.is_some())
                .max_by(|a, b| {
                    let score = |x: &&(TrackId, TrackId, &Option<Payload>)| {
                        x.2.as_ref().map_or(0.0, |p| p.best().score)
                    };
                    score(a).total_cmp(&score(b)).then(b.0.cmp(&a.0))
                }),
        };
        let Some(&(q, r, Some(payload))) = chosen else {
            continue;
        };
        let from = sampler.unwrap_or(q);
        let mut edge = Edge::from_match(payload.best(), q, r, from);
        edge.kind = kind;
        edge.direction = direction;
        edge.found_both_ways = found_both_ways;
        out.push(edge);
    }
    out.sort_by_key(|e| (e.from, e.to));
    out
}

impl Engine {
    /// The whole sample graph: every catalogued track and one edge per related pair.
    pub fn graph(&self) -> Result<Graph, EngineError> {
        let nodes: Vec<Node> = self
            .store()
            .tracks()?
            .into_iter()
            .map(|(id, t)| Node::new(id, t))
            .collect();
        let years = nodes.iter().map(|n| (n.id, n.year)).collect();
        let edges = edges(&self.store().relations(None)?, &years);
        Ok(Graph { nodes, edges })
    }

    /// The relations of track `id`, sorted into what it samples, what samples it, what it
    /// shares without a known direction, and its duplicates; each list surest first.
    pub fn relations_of(&self, id: TrackId) -> Result<TrackRelations, EngineError> {
        let store = self.store();
        let track = store
            .track(id)?
            .ok_or_else(|| EngineError::NoSuchTrack(id.to_string()))?;
        let relations = store.relations(Some(id))?;
        let mut others = BTreeMap::new();
        for r in &relations {
            let other = if r.query == id { r.reference } else { r.query };
            if let std::collections::btree_map::Entry::Vacant(slot) = others.entry(other)
                && let Some(t) = store.track(other)?
            {
                slot.insert(Node::new(other, t));
            }
        }
        let mut years: BTreeMap<TrackId, Option<i32>> =
            others.values().map(|n| (n.id, n.year)).collect();
        years.insert(id, track.year);
        let mut out = TrackRelations {
            track: Node::new(id, track),
            samples: Vec::new(),
            sampled_by: Vec::new(),
            shares_material: Vec::new(),
            duplicates: Vec::new(),
            others: others.into_values().collect(),
        };
        for edge in edges(&relations, &years) {
            let mine = if edge.from == id {
                edge.clone()
            } else {
                edge.reversed()
            };
            match (edge.kind, edge.direction) {
                (RelationKind::Duplicate, _) => out.duplicates.push(mine),
                (RelationKind::Sample, Direction::Directed) if edge.from == id => {
                    out.samples.push(edge)
                }
                (RelationKind::Sample, Direction::Directed) => out.sampled_by.push(edge),
                (RelationKind::Sample, _) => out.shares_material.push(mine),
            }
        }
        for list in [
            &mut out.samples,
            &mut out.sampled_by,
            &mut out.shares_material,
            &mut out.duplicates,
        ] {
            list.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        Ok(out)
    }

    /// What track `id` samples: edges from it to earlier tracks (see [`Self::relations_of`]
    /// for the undirected ones).
    pub fn samples_of(&self, id: TrackId) -> Result<Vec<Edge>, EngineError> {
        Ok(self.relations_of(id)?.samples)
    }

    /// Who sampled track `id`: edges from later tracks to it.
    pub fn sampled_by(&self, id: TrackId) -> Result<Vec<Edge>, EngineError> {
        Ok(self.relations_of(id)?.sampled_by)
    }
}

/// m:ss for sentences.
fn clock(s: f64) -> String {
    let whole = s.max(0.0).round() as u64;
    format!("{}:{:02}", whole / 60, whole % 60)
}

/// How `to`'s material was changed inside `from`, in words.
fn transform_words(e: &Edge) -> String {
    let st = |p: f64| format!("{p:+.1} semitones");
    match (e.transform, e.speed) {
        (MatchKind::Exact, _) => "unchanged in speed and pitch".to_string(),
        (_, Some(s)) => format!(
            "{} to {s:.2}x ({})",
            if s < 1.0 { "slowed" } else { "sped up" },
            st(e.pitch_semitones)
        ),
        _ => {
            let tempo_moved = (e.tempo - 1.0).abs() >= 0.005;
            let pitch_moved = e.pitch_semitones.abs() >= 0.25;
            match (tempo_moved, pitch_moved) {
                (true, true) => format!(
                    "time-stretched to {:.2}x and pitch-shifted by {}",
                    e.tempo,
                    st(e.pitch_semitones)
                ),
                (true, false) => format!("time-stretched to {:.2}x at its pitch", e.tempo),
                _ => format!("pitch-shifted by {} at its tempo", st(e.pitch_semitones)),
            }
        }
    }
}

fn times_words(n: usize) -> String {
    match n {
        0 | 1 => "once".to_string(),
        n => format!("looped {n} times"),
    }
}

/// The edge in one plain sentence, naming tracks through `node` (which must know both).
///
/// "Runaway (Kanye West, 2010) samples Expo 83 (Backyard Heavies, 1973): 0:00-1:05 of
/// Runaway uses 0:12-0:20 of Expo 83, slowed to 0.87x (-2.4 semitones), looped 8 times
/// (score 0.99)."
pub fn sentence<'a>(e: &Edge, node: impl Fn(TrackId) -> Option<&'a Node>) -> String {
    let fallback = |id: TrackId| Node::new(id, unknown_track(id));
    let from = node(e.from).cloned().unwrap_or_else(|| fallback(e.from));
    let to = node(e.to).cloned().unwrap_or_else(|| fallback(e.to));
    let spans = format!(
        "{}-{} of {}",
        clock(e.from_start_s),
        clock(e.from_end_s),
        from.name()
    );
    let theirs = format!(
        "{}-{} of {}",
        clock(e.to_start_s),
        clock(e.to_end_s),
        to.name()
    );
    let score = format!("score {:.2}", e.score);
    match (e.kind, e.direction) {
        (RelationKind::Duplicate, _) => format!(
            "{} is a duplicate of {}: the same recording, {spans} aligned with {theirs} \
             ({score}).",
            from.full_name(),
            to.full_name()
        ),
        (RelationKind::Sample, Direction::Directed) => format!(
            "{} samples {}: {spans} uses {theirs}, {}, {} ({score}).",
            from.full_name(),
            to.full_name(),
            transform_words(e),
            times_words(e.loop_count)
        ),
        (RelationKind::Sample, direction) => {
            let why = match direction {
                Direction::SameYear => format!(
                    "both are from {}",
                    from.year.map_or_else(String::new, |y| y.to_string())
                ),
                _ => {
                    let missing: Vec<String> = [&from, &to]
                        .iter()
                        .filter(|n| n.year.is_none())
                        .map(|n| n.name())
                        .collect();
                    format!("no release year for {}", missing.join(" or "))
                }
            };
            format!(
                "{} shares material with {}: {spans} matches {theirs}, {}, {}; which \
                 sampled which is unknown ({why}) ({score}).",
                from.full_name(),
                to.full_name(),
                transform_words(e),
                times_words(e.loop_count)
            )
        }
    }
}

fn unknown_track(id: TrackId) -> TrackInfo {
    TrackInfo {
        path: format!("track {id}"),
        content_hash: String::new(),
        duration_s: 0.0,
        title: None,
        artist: None,
        album: None,
        year: None,
        musicbrainz_recording_id: None,
        musicbrainz_release_id: None,
        n_postings: 0,
        indexed_unix_s: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{PAYLOAD_VERSION, Segment};

    fn payload(kind: RelationKind, tempo: f64, pitch: f64, score: f64, loops: usize) -> Vec<u8> {
        let seg = Segment {
            query_start_s: 6.0,
            query_end_s: 16.0,
            ref_start_s: 40.0,
            ref_end_s: 48.0,
            hits: 50,
        };
        let m = FoundMatch {
            query_start_s: 6.0,
            query_end_s: 16.0 + 10.0 * (loops as f64 - 1.0),
            ref_start_s: 40.0,
            ref_end_s: 48.0,
            tempo,
            pitch_semitones: pitch,
            speed: Some(tempo),
            transform: MatchKind::Speed,
            loop_count: loops,
            occurrences: vec![seg; loops],
            score,
            significance: 80.0,
            hits: 50,
        };
        serde_json::to_vec(&Payload {
            version: PAYLOAD_VERSION,
            kind,
            query_duration_s: 30.0,
            reference_duration_s: 120.0,
            matches: vec![m],
        })
        .expect("encodes")
    }

    fn rel(query: TrackId, reference: TrackId, payload: Vec<u8>) -> Relation {
        Relation {
            query,
            reference,
            payload,
        }
    }

    #[test]
    fn direction_comes_from_years_not_from_who_was_searched() {
        // Track 1 (searched) contains track 2's material at 0.8x; but 1 is older.
        let relations = [rel(1, 2, payload(RelationKind::Sample, 0.8, -3.86, 0.9, 1))];
        let years = BTreeMap::from([(1, Some(1970)), (2, Some(2010))]);
        let e = &edges(&relations, &years)[0];
        assert_eq!((e.from, e.to, e.direction), (2, 1, Direction::Directed));
        // Seen from the sampler, the source's material plays at 1/0.8 = 1.25x.
        assert!((e.tempo - 1.25).abs() < 1e-9, "{}", e.tempo);
        assert!((e.pitch_semitones - 3.86).abs() < 1e-9);
        assert_eq!((e.from_start_s, e.to_start_s), (40.0, 6.0));

        let years = BTreeMap::from([(1, Some(2010)), (2, None)]);
        let e = &edges(&relations, &years)[0];
        assert_eq!((e.from, e.to, e.direction), (1, 2, Direction::UnknownYear));
        let years = BTreeMap::from([(1, Some(1999)), (2, Some(1999))]);
        assert_eq!(edges(&relations, &years)[0].direction, Direction::SameYear);
    }

    #[test]
    fn a_pair_found_both_ways_is_one_edge_from_the_samplers_side() {
        let relations = [
            // 1 searched: found 2 once (2 is the looped sampler, seen from its source).
            rel(1, 2, payload(RelationKind::Sample, 1.25, 3.86, 0.99, 1)),
            // 2 searched: found 1 looped four times at 0.8x.
            rel(2, 1, payload(RelationKind::Sample, 0.8, -3.86, 0.9, 4)),
        ];
        let years = BTreeMap::from([(1, Some(1973)), (2, Some(2010))]);
        let all = edges(&relations, &years);
        assert_eq!(all.len(), 1);
        let e = &all[0];
        assert_eq!((e.from, e.to), (2, 1));
        assert!(e.found_both_ways);
        assert_eq!(e.loop_count, 4);
        assert!((e.tempo - 0.8).abs() < 1e-9);
    }

    #[test]
    fn sentences_use_years_and_say_when_direction_is_unknown() {
        let node = |id, title: &str, year| Node {
            id,
            title: Some(title.to_string()),
            artist: Some("A".to_string()),
            album: None,
            year,
            musicbrainz_recording_id: None,
            musicbrainz_release_id: None,
            path: format!("/m/{id}.mp3"),
            duration_s: 100.0,
        };
        let nodes = [
            node(1, "Expo 83", Some(1973)),
            node(2, "Runaway", Some(2010)),
        ];
        let find = |id: TrackId| nodes.iter().find(|n| n.id == id);
        let relations = [rel(
            2,
            1,
            payload(RelationKind::Sample, 0.87, -2.41, 0.99, 8),
        )];
        let years = nodes.iter().map(|n| (n.id, n.year)).collect();
        let e = &edges(&relations, &years)[0];
        assert_eq!(
            sentence(e, find),
            "Runaway (A, 2010) samples Expo 83 (A, 1973): 0:06-1:26 of Runaway uses \
             0:40-0:48 of Expo 83, slowed to 0.87x (-2.4 semitones), looped 8 times \
             (score 0.99)."
        );
        let years = BTreeMap::from([(1, Some(1973)), (2, None)]);
        let e = &edges(&relations, &years)[0];
        let nodes = [node(1, "Expo 83", Some(1973)), node(2, "Runaway", None)];
        let s = sentence(e, |id| nodes.iter().find(|n| n.id == id));
        assert!(
            s.starts_with("Runaway (A) shares material with Expo 83 (A, 1973)")
                && s.contains("(no release year for Runaway)"),
            "{s}"
        );
    }
}
