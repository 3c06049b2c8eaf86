//! `corpus`: chooses the reference library, the background-only music and the drum
//! loops from the fetched corpus, and splits the references into tune / heldout.

use crate::dedup;
use crate::types::{Duplicate, Split, Track};
use crate::util::{Rng, canonical, fnv1a, probe_duration, write_json};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Packages whose music forms the reference library.
pub const REF_PACKAGES: &[&str] = &[
    "warzone2100-music",
    "singularity-music",
    "nexuiz-music",
    "marsshooter-data",
    "wizznic-data",
    "starfighter-data",
];
/// Packages whose songs are background music only. Any other package in the corpus
/// folder (supertux, planetblupi, ... fetched for other uses) is left out: the query set
/// must not change with what else the cache holds.
const BACKGROUND_PACKAGES: &[&str] = &["fretsonfire-songs-sectoid"];
pub const DRUM_PACKAGE: &str = "sonic-pi-samples";
/// sonic-pi loops that are drums or percussion (the others are drones and synths).
const DRUM_LOOPS: &[&str] = &[
    "loop_amen",
    "loop_amen_full",
    "loop_breakbeat",
    "loop_compus",
    "loop_industrial",
    "loop_mika",
    "loop_perc1",
    "loop_perc2",
    "loop_safari",
    "loop_tabla",
];
const AUDIO_EXT: &[&str] = &["ogg", "opus", "flac", "mp3", "wav", "m4a"];
/// Stems of multitrack songs: not whole songs.
const STEM_NAMES: &[&str] = &["guitar", "rhythm", "drums", "bass", "vocals"];
pub const MIN_MUSIC_S: f64 = 45.0;

pub struct CorpusArgs {
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub refs: usize,
    pub background: usize,
    pub tune_percent: u64,
    pub jobs: usize,
}

/// All audio files of the corpus: DIR/files.txt when present, else a walk.
pub fn list_files(corpus: &Path) -> Result<Vec<PathBuf>> {
    let list = corpus.join("files.txt");
    if list.exists() {
        let s = std::fs::read_to_string(&list)
            .with_context(|| format!("cannot read {}", list.display()))?;
        return Ok(s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(PathBuf::from)
            .collect());
    }
    audio_files_under(corpus)
}

/// Every audio file under `dir` (fetch.sh's `.debs` folder skipped), sorted.
pub fn audio_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.file_name().is_some_and(|n| n == ".debs") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if is_audio(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_audio(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXT.contains(&e.to_ascii_lowercase().as_str()))
}

fn rel_of(corpus: &Path, p: &Path) -> String {
    p.strip_prefix(corpus)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

fn package_of(rel: &str) -> String {
    rel.split('/').next().unwrap_or_default().to_string()
}

/// Looks like music by its folders or name (not sound effects).
fn music_like(rel: &str) -> bool {
    let lower = rel.to_ascii_lowercase();
    let mut parts: Vec<&str> = lower.split('/').skip(1).collect();
    // The file name counts without its extension.
    if let Some(last) = parts.last_mut() {
        *last = last.rsplit_once('.').map_or(*last, |(stem, _)| stem);
    }
    parts
        .iter()
        .any(|c| c.contains("music") || c.contains("cdtracks") || c.contains("soundtrack"))
}

/// Whether a corpus file (path relative to the corpus) is a candidate track: `Some(true)`
/// for a reference package's music, `Some(false)` for a background package's song, `None`
/// otherwise (drum samples, sound effects, packages of neither list).
fn candidate_role(rel: &str) -> Option<bool> {
    let pkg = package_of(rel);
    let is_ref = REF_PACKAGES.contains(&pkg.as_str());
    if !is_ref && !BACKGROUND_PACKAGES.contains(&pkg.as_str()) {
        return None;
    }
    let songs = rel.to_ascii_lowercase().contains("/songs/");
    (music_like(rel) || (!is_ref && songs)).then_some(is_ref)
}

fn is_stem(p: &Path) -> bool {
    p.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| STEM_NAMES.contains(&s.to_ascii_lowercase().as_str()))
}

/// Drum loops of the corpus (sonic-pi loop_*.flac), drums and percussion first.
pub fn drum_loops(files: &[PathBuf]) -> Vec<String> {
    let loops: Vec<&PathBuf> = files
        .iter()
        .filter(|p| {
            p.to_string_lossy().contains(DRUM_PACKAGE)
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("loop_"))
        })
        .collect();
    let drums: Vec<String> = loops
        .iter()
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| DRUM_LOOPS.contains(&s))
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if drums.is_empty() {
        loops
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    } else {
        drums
    }
}

pub fn run_corpus(a: &CorpusArgs) -> Result<()> {
    let corpus = canonical(&a.corpus);
    if !corpus.is_dir() {
        bail!(
            "corpus folder {} does not exist; fetch it with /work/shared/corpus/fetch.sh DIR",
            corpus.display()
        );
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let out = canonical(&a.out);
    let fp_cache = out.join("tmp").join("chromaprint");
    std::fs::create_dir_all(&fp_cache)?;

    let files: Vec<PathBuf> = list_files(&corpus)?
        .into_iter()
        .map(|p| if p.is_absolute() { p } else { corpus.join(p) })
        .collect();
    let loops = drum_loops(&files);
    if loops.is_empty() {
        bail!("no sonic-pi loop_*.flac drum loops in {}", corpus.display());
    }

    // Candidates: music-like files, references first, then other packages' songs.
    let mut cands: Vec<(PathBuf, String, bool)> = Vec::new(); // (path, rel, is_ref_package)
    for p in &files {
        let rel = rel_of(&corpus, p);
        if !is_audio(p) || is_stem(p) {
            continue;
        }
        if let Some(is_ref) = candidate_role(&rel) {
            cands.push((p.clone(), rel, is_ref));
        }
    }
    eprintln!(
        "corpus: {} audio files, {} music-like candidates; probing durations",
        files.len(),
        cands.len()
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.jobs.max(1))
        .build()?;
    let durs: Vec<Result<f64>> = pool.install(|| {
        cands
            .par_iter()
            .map(|(p, _, _)| probe_duration(p))
            .collect()
    });
    let mut tracks: Vec<(Track, bool)> = Vec::new();
    for ((p, rel, is_ref), d) in cands.into_iter().zip(durs) {
        let d = d?;
        if d >= MIN_MUSIC_S {
            tracks.push((
                Track {
                    path: p.to_string_lossy().into_owned(),
                    package: package_of(&rel),
                    rel,
                    duration_s: d,
                },
                is_ref,
            ));
        }
    }
    if tracks.iter().filter(|t| t.1).count() < a.background + 4 {
        bail!(
            "only {} reference-package music tracks >= {MIN_MUSIC_S} s in {}: is the corpus fetched?",
            tracks.iter().filter(|t| t.1).count(),
            corpus.display()
        );
    }

    // Copies of one recording: keep one (prefer reference packages, then the first path).
    eprintln!(
        "corpus: fingerprinting {} tracks for duplicates (cached in {})",
        tracks.len(),
        fp_cache.display()
    );
    let fps: Vec<Result<Vec<u32>>> = pool.install(|| {
        tracks
            .par_iter()
            .map(|(t, _)| dedup::fingerprint(Path::new(&t.path), &fp_cache))
            .collect()
    });
    let fps: Vec<Vec<u32>> = fps.into_iter().collect::<Result<_>>()?;
    let mut shared = dedup::find_shared(&fps, 3.0);
    for s in shared.iter().filter(|s| s.shared_s < dedup::MIN_SHARED_S) {
        eprintln!(
            "corpus: note: {} and {} share {:.1} s (BER {:.3}); kept both",
            tracks[s.a].0.rel, tracks[s.b].0.rel, s.shared_s, s.ber
        );
    }
    shared.retain(|s| s.shared_s >= dedup::MIN_SHARED_S);
    let mut dropped: HashSet<usize> = HashSet::new();
    let mut duplicates = Vec::new();
    let mut shared_sorted = shared.clone();
    shared_sorted.sort_by(|x, y| y.shared_s.total_cmp(&x.shared_s));
    for s in &shared_sorted {
        if dropped.contains(&s.a) || dropped.contains(&s.b) {
            continue;
        }
        // Keep the reference-package one, else the first.
        let (keep, drop) = if tracks[s.b].1 && !tracks[s.a].1 {
            (s.b, s.a)
        } else {
            (s.a, s.b)
        };
        dropped.insert(drop);
        duplicates.push(Duplicate {
            kept: tracks[keep].0.rel.clone(),
            dropped: tracks[drop].0.rel.clone(),
            shared_s: (s.shared_s * 10.0).round() / 10.0,
            ber: (s.ber * 1000.0).round() / 1000.0,
        });
    }
    for d in &duplicates {
        eprintln!(
            "corpus: {} shares {:.0} s with {} (BER {:.3}): dropped",
            d.dropped, d.shared_s, d.kept, d.ber
        );
    }
    let kept: Vec<(Track, bool)> = tracks
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, t)| t)
        .collect();

    // Deterministic choice: seeded shuffle; the first tracks (at most two per package)
    // become background-only music.
    let mut refs: Vec<Track> = kept.iter().filter(|t| t.1).map(|t| t.0.clone()).collect();
    refs.sort_by(|x, y| x.rel.cmp(&y.rel));
    let mut rng = Rng::derive(a.seed, "corpus", 0);
    rng.shuffle(&mut refs);
    let mut background: Vec<Track> = Vec::new();
    let mut per_pkg: BTreeMap<String, usize> = BTreeMap::new();
    let mut rest = Vec::new();
    for t in refs {
        let n = per_pkg.entry(t.package.clone()).or_default();
        if background.len() < a.background && *n < 2 {
            *n += 1;
            background.push(t);
        } else {
            rest.push(t);
        }
    }
    if a.refs > 0 && rest.len() > a.refs {
        // Tracks beyond --refs are never indexed, so they may serve as background.
        background.extend(rest.split_off(a.refs));
    }
    // Songs of other packages (fretsonfire) are background only.
    background.extend(kept.iter().filter(|t| !t.1).map(|t| t.0.clone()));
    background.sort_by(|x, y| x.rel.cmp(&y.rel));

    let (mut tune, mut heldout): (Vec<Track>, Vec<Track>) = rest
        .into_iter()
        .partition(|t| fnv1a(t.rel.as_bytes()) % 100 < a.tune_percent);
    tune.sort_by(|x, y| x.rel.cmp(&y.rel));
    heldout.sort_by(|x, y| x.rel.cmp(&y.rel));
    if tune.is_empty() || heldout.is_empty() {
        bail!(
            "split left tune={} heldout={} references: use more --refs",
            tune.len(),
            heldout.len()
        );
    }

    let mut all: Vec<&Track> = tune.iter().chain(heldout.iter()).collect();
    all.sort_by(|x, y| x.path.cmp(&y.path));
    let refs_txt: String = all.iter().map(|t| format!("{}\n", t.path)).collect();
    std::fs::write(out.join("refs.txt"), refs_txt)?;
    let split = Split {
        seed: a.seed,
        corpus: corpus.to_string_lossy().into_owned(),
        tune_percent: a.tune_percent,
        tune,
        heldout,
        background,
        drum_loops: loops,
        duplicates,
    };
    write_json(&out.join("split.json"), &split)?;
    let hours = |v: &[Track]| v.iter().map(|t| t.duration_s).sum::<f64>() / 3600.0;
    eprintln!(
        "corpus: {} references ({} tune, {:.2} h; {} heldout, {:.2} h), {} background tracks, {} drum loops, {} duplicates dropped",
        split.tune.len() + split.heldout.len(),
        split.tune.len(),
        hours(&split.tune),
        split.heldout.len(),
        hours(&split.heldout),
        split.background.len(),
        split.drum_loops.len(),
        split.duplicates.len()
    );
    println!("{}", out.join("refs.txt").display());
    println!("{}", out.join("split.json").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn music_filter() {
        assert!(music_like(
            "warzone2100-music/usr/share/games/warzone2100/music/menu.opus"
        ));
        assert!(music_like(
            "nexuiz-music/_unpacked/sound/cdtracks/infight.ogg"
        ));
        assert!(music_like(
            "wizznic-data/usr/share/games/wizznic/data/menu-music.ogg"
        ));
        assert!(!music_like(
            "starfighter-data/usr/share/starfighter/sound/explode.ogg"
        ));
        assert!(!music_like(
            "marsshooter-data/usr/share/games/marsshooter/audio/tutorial.ogg"
        ));
        // The package name alone does not count.
        assert!(!music_like("nexuiz-music/_unpacked/sound/misc/x.ogg"));
    }

    #[test]
    fn only_listed_packages_give_candidates() {
        assert_eq!(
            candidate_role("warzone2100-music/usr/share/games/warzone2100/music/track1.opus"),
            Some(true)
        );
        assert_eq!(
            candidate_role(
                "fretsonfire-songs-sectoid/usr/share/games/fretsonfire/data/songs/x/song.ogg"
            ),
            Some(false)
        );
        // Music of a package fetched for another use must not change the query set.
        assert_eq!(
            candidate_role("planetblupi-music-ogg/usr/share/planetblupi/music/music005.ogg"),
            None
        );
        assert_eq!(
            candidate_role("sonic-pi-samples/usr/share/sonic-pi/samples/loop_amen.flac"),
            None
        );
    }
}
