//! `scale`: grows an LMDB store to 10, 100, 1,000... hours with synthetic postings (no
//! decoding) on top of the real bench references, and at each size measures the store
//! and identify (as a separate `cratedigger` process, so its peak memory is its own).
//!
//! Synthetic tracks re-emit a real reference's postings under a new track id with the
//! *keys shuffled* among the track's postings: every key keeps its count, so key
//! frequencies, the stop-word cap and the postings a query's keys touch all grow as they
//! would with more real music, and every (time, freq, span) stays as real music made it,
//! so the store's anchor tables and partner distances cost what real music's do; the hits
//! a query gets from a synthetic track pair its quads with unrelated reference places, so
//! they have no consistent time offset and cannot form a match. (Shuffling the times
//! instead, as before session 15, breaks the anchors apart.)
//! (Mapping the keys instead, e.g. XOR with a per-track mask, would scatter the
//! postings over the whole 32-bit key space, where real query keys almost never land:
//! lists would stay near one posting and the measured cost would not grow.) Each
//! synthetic track keeps its template's real peak list as side data, so the store's
//! size per hour is the real one.

use crate::score::parse_identify;
use crate::types::TruthQuery;
use crate::util::{Rng, canonical, file_name, median, percentile, read_json, write_json};
use anyhow::{Context, Result, bail};
use fingerprint::{Fingerprinter, Params};
use index::{Entry, LmdbOptions, LmdbStore, Store, TrackInfo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

pub struct ScaleArgs {
    pub bin: PathBuf,
    pub db: PathBuf,
    /// File listing the real reference recordings, one path a line.
    pub base: PathBuf,
    pub hours: Vec<f64>,
    pub queries: Vec<PathBuf>,
    /// Queries whose reference is among the real tracks (their truth is in `truth`).
    pub planted: Vec<PathBuf>,
    pub truth: Option<PathBuf>,
    pub runs: usize,
    pub out: PathBuf,
    pub seed: u64,
    pub delta_fraction: f64,
    /// Stop growing once this much time has gone into growing.
    pub max_grow_s: f64,
    /// Stop growing when the store's file system would keep less than this free.
    pub min_free_gb: f64,
    pub keep: bool,
    /// Continue growing a store left by an earlier run (killed or `--keep`), appending to
    /// the report in `out`.
    pub resume: bool,
    /// Skip a query at a checkpoint when its peak RSS, extrapolated linearly in postings
    /// from the previous checkpoint, would exceed this (identify's hits grow with the store).
    pub max_identify_gb: f64,
    /// Likewise for its median wall time.
    pub max_identify_s: f64,
}

/// A real reference as the engine would index it.
struct Template {
    path: String,
    content_hash: String,
    duration_s: f64,
    entries: Vec<Entry>,
    peaks: Vec<u8>,
}

/// One identify process.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IdentifyRun {
    pub wall_s: f64,
    pub max_rss_mb: f64,
    pub matches: usize,
    /// Matches against synthetic tracks (a chance match made by the synthetic material).
    pub synthetic_matches: usize,
    /// Best score of a match to the planted query's true reference, if any.
    pub planted_score: Option<f64>,
    /// The significance (evidence in nats) of that match.
    pub planted_significance: Option<f64>,
    pub lookup_s: Option<f64>,
    pub n_hits: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct QueryStats {
    pub query: String,
    pub planted: bool,
    /// Runs in order; the first runs right after growing (page cache as the writer left it).
    pub runs: Vec<IdentifyRun>,
    pub median_s: f64,
    pub p95_s: f64,
    pub max_rss_mb: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Checkpoint {
    pub target_hours: f64,
    pub hours: f64,
    pub tracks: u64,
    pub synthetic_tracks: u64,
    pub postings: u64,
    pub keys: u64,
    pub mean_postings_per_key: f64,
    pub store_bytes: u64,
    pub bytes_per_hour: f64,
    /// Seconds spent growing from the previous checkpoint (merges included) and in the
    /// final compaction.
    pub grow_s: f64,
    pub compact_s: f64,
    /// Resident set size of this process (the writer) at its peak so far.
    pub writer_peak_rss_mb: f64,
    pub queries: Vec<QueryStats>,
    /// Queries not run at this size because the extrapolated memory or time was too high.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Growth stopped before the target (time or disk limit).
    pub stopped_early: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ScaleReport {
    pub bin: String,
    pub base: String,
    pub real_tracks: usize,
    pub real_hours: f64,
    pub template_s: f64,
    pub delta_fraction: f64,
    pub cores: usize,
    pub checkpoints: Vec<Checkpoint>,
}

pub fn run_scale(a: &ScaleArgs) -> Result<()> {
    if a.db.join("data.mdb").exists() != a.resume {
        bail!(
            "{}: scale builds its own store; --resume continues one it left",
            a.db.display()
        );
    }
    let refs: Vec<String> = std::fs::read_to_string(&a.base)
        .with_context(|| format!("reading {}", a.base.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let params = Params::default();
    let started = Instant::now();
    eprintln!("scale: fingerprinting {} real references", refs.len());
    let templates = fingerprint_refs(&refs, &params)?;
    let template_s = started.elapsed().as_secs_f64();
    let real_hours: f64 = templates.iter().map(|t| t.duration_s).sum::<f64>() / 3600.0;
    eprintln!("scale: {real_hours:.2} h of real references in {template_s:.0} s");

    let truth: Vec<TruthQuery> = match &a.truth {
        Some(t) => read_json(t)?,
        None => Vec::new(),
    };
    let planted_refs: Vec<(PathBuf, Option<String>)> = a
        .planted
        .iter()
        .map(|q| (q.clone(), planted_reference(&truth, q)))
        .collect();
    for (q, r) in &planted_refs {
        if r.is_none() {
            bail!(
                "no sample in the truth file for planted query {}",
                q.display()
            );
        }
    }

    let options = LmdbOptions::default().delta_fraction(a.delta_fraction);
    let store = LmdbStore::open_with_options(&a.db, &params.describe(), options)?;
    if !a.resume {
        for t in &templates {
            store.put_track_with_side_data(&track_info(t), &t.entries, &t.peaks, None)?;
        }
    }
    let mut report = ScaleReport {
        bin: a.bin.display().to_string(),
        base: a.base.display().to_string(),
        real_tracks: templates.len(),
        real_hours,
        template_s,
        delta_fraction: a.delta_fraction,
        cores: crate::util::nproc(),
        checkpoints: Vec::new(),
    };
    if a.resume && a.out.exists() {
        report.checkpoints = read_json::<ScaleReport>(&a.out)?.checkpoints;
    }
    let stats = store.stats()?;
    let mut hours = stats.total_duration_s / 3600.0;
    let mut synthetic = stats.n_tracks.saturating_sub(templates.len() as u64);

    // A generator thread prepares synthetic tracks while this one writes.
    let (tx, rx) = mpsc::sync_channel::<(TrackInfo, Vec<Entry>, usize)>(8);
    let seed = a.seed;
    let templates = std::sync::Arc::new(templates);
    let gen_templates = std::sync::Arc::clone(&templates);
    let first = synthetic;
    let generator = std::thread::spawn(move || {
        let mut n: u64 = first;
        loop {
            let mut rng = Rng::derive(seed, "scale", n);
            let t = rng.below(gen_templates.len());
            let (info, entries) = synthetic_track(&gen_templates[t], n, &mut rng);
            if tx.send((info, entries, t)).is_err() {
                return;
            }
            n += 1;
        }
    });

    let mut grow_total_s = 0.0;
    let mut stop: Option<String> = None;
    for &target in &a.hours {
        if stop.is_some() || target <= hours {
            continue;
        }
        let grow_start = Instant::now();
        while hours < target {
            if grow_total_s + grow_start.elapsed().as_secs_f64() > a.max_grow_s {
                stop = Some(format!("time limit of {:.0} s reached", a.max_grow_s));
                break;
            }
            if synthetic.is_multiple_of(64) {
                let free_gb = free_bytes(&a.db)? as f64 / 1e9;
                if free_gb < a.min_free_gb {
                    stop = Some(format!("only {free_gb:.1} GB left free on the disk"));
                    break;
                }
            }
            let (info, entries, t) = rx.recv().context("synthetic track generator stopped")?;
            store.put_track_with_side_data(&info, &entries, &templates[t].peaks, None)?;
            hours += info.duration_s / 3600.0;
            synthetic += 1;
            if synthetic.is_multiple_of(500) {
                eprintln!(
                    "scale: {hours:.0} h, {synthetic} synthetic tracks, {:.0} s",
                    grow_start.elapsed().as_secs_f64()
                );
            }
        }
        let grow_s = grow_start.elapsed().as_secs_f64();
        let compact_start = Instant::now();
        store.compact()?;
        let compact_s = compact_start.elapsed().as_secs_f64();
        grow_total_s += grow_s + compact_s;
        let stats = store.stats()?;
        eprintln!(
            "scale: checkpoint {hours:.1} h: {} postings on {} keys, {:.1} MB, grown in {grow_s:.0} s + compact {compact_s:.0} s",
            stats.n_postings,
            stats.n_keys,
            stats.bytes_on_disk as f64 / 1e6
        );
        let mut queries = Vec::new();
        let mut skipped = Vec::new();
        let previous = report.checkpoints.last();
        let all = a
            .queries
            .iter()
            .map(|q| (q, None))
            .chain(planted_refs.iter().map(|(q, r)| (q, r.as_deref())));
        for (q, r) in all {
            match too_costly(a, previous, q, stats.n_postings) {
                Some(why) => {
                    eprintln!("scale:   {}: skipped, {why}", q.display());
                    skipped.push(format!("{}: {why}", q.display()));
                }
                None => queries.push(measure_query(a, q, r)?),
            }
        }
        report.checkpoints.push(Checkpoint {
            target_hours: target,
            hours,
            tracks: stats.n_tracks,
            synthetic_tracks: synthetic,
            postings: stats.n_postings,
            keys: stats.n_keys,
            mean_postings_per_key: stats.mean_postings_per_key(),
            store_bytes: stats.bytes_on_disk,
            bytes_per_hour: stats.bytes_on_disk as f64 / hours,
            grow_s,
            compact_s,
            writer_peak_rss_mb: self_peak_rss_mb(),
            queries,
            skipped,
            stopped_early: stop.clone(),
        });
        write_json(&a.out, &report)?;
        eprintln!("scale: wrote {}", a.out.display());
    }
    drop(rx);
    let _ = generator.join();
    drop(store);
    if !a.keep {
        std::fs::remove_dir_all(&a.db).with_context(|| format!("removing {}", a.db.display()))?;
    }
    Ok(())
}

/// Why `q` should not run at a store of `postings`, judged by its cost at the previous
/// checkpoint scaled linearly in postings (what the measurements show: hits, and with
/// them memory and time, grow with the postings the query's keys touch).
fn too_costly(
    a: &ScaleArgs,
    previous: Option<&Checkpoint>,
    q: &Path,
    postings: u64,
) -> Option<String> {
    let prev = previous?;
    let stats = prev.queries.iter().find(|s| Path::new(&s.query) == q)?;
    let ratio = postings as f64 / prev.postings.max(1) as f64;
    let gb = stats.max_rss_mb * ratio / 1024.0;
    let s = stats.median_s * ratio;
    if gb > a.max_identify_gb {
        Some(format!(
            "extrapolated peak RSS {gb:.1} GB > {:.1} GB",
            a.max_identify_gb
        ))
    } else if s > a.max_identify_s {
        Some(format!(
            "extrapolated median {s:.0} s > {:.0} s",
            a.max_identify_s
        ))
    } else {
        None
    }
}

/// Decodes and fingerprints the references exactly as `Engine::index_file` does.
fn fingerprint_refs(refs: &[String], params: &Params) -> Result<Vec<Template>> {
    let fp = Fingerprinter::new(params.clone())?;
    let opts = audio::DecodeOptions {
        target_rate_hz: params.sample_rate_hz,
        ..audio::DecodeOptions::default()
    };
    refs.par_iter()
        .map(|r| {
            let path = Path::new(r);
            let hash = audio::content_hash(path).with_context(|| format!("hashing {r}"))?;
            let (decoded, _tags) =
                audio::decode_file(path, &opts).with_context(|| format!("decoding {r}"))?;
            let print = fp.reference_print(&decoded.samples);
            Ok(Template {
                path: engine::path_key(path),
                content_hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
                duration_s: decoded.duration_s,
                entries: print
                    .quads
                    .iter()
                    .map(|q| (q.hash, q.time, q.freq, q.span))
                    .collect(),
                peaks: fingerprint::peak_list::encode(&print.verify_peaks),
            })
        })
        .collect()
}

fn track_info(t: &Template) -> TrackInfo {
    TrackInfo {
        path: t.path.clone(),
        content_hash: t.content_hash.clone(),
        duration_s: t.duration_s,
        title: None,
        artist: None,
        album: None,
        year: None,
        musicbrainz_recording_id: None,
        musicbrainz_release_id: None,
        n_postings: t.entries.len() as u64,
        indexed_unix_s: 0,
    }
}

/// Path prefix of synthetic tracks, so matches against them can be told apart.
const SYNTHETIC_PREFIX: &str = "synthetic:";

/// Synthetic track `n`: the template's postings with their keys shuffled among them.
fn synthetic_track(t: &Template, n: u64, rng: &mut Rng) -> (TrackInfo, Vec<Entry>) {
    let mut keys: Vec<u32> = t.entries.iter().map(|e| e.0).collect();
    rng.shuffle(&mut keys);
    let entries = t
        .entries
        .iter()
        .zip(keys)
        .map(|(&(_, time, freq, span), key)| (key, time, freq, span))
        .collect();
    let info = TrackInfo {
        path: format!("{SYNTHETIC_PREFIX}{n}"),
        content_hash: format!("{SYNTHETIC_PREFIX}{n}"),
        ..track_info(t)
    };
    (info, entries)
}

/// The reference (canonical path) of the first sample of `query` in the truth.
fn planted_reference(truth: &[TruthQuery], query: &Path) -> Option<String> {
    let want = canonical(query);
    truth
        .iter()
        .find(|t| canonical(Path::new(&t.query)) == want)
        .and_then(|t| t.samples.first())
        .map(|s| canonical(Path::new(&s.ref_path)).display().to_string())
}

fn measure_query(a: &ScaleArgs, q: &Path, reference: Option<&str>) -> Result<QueryStats> {
    let mut runs = Vec::new();
    for _ in 0..a.runs.max(1) {
        runs.push(identify_once(&a.bin, &a.db, q, reference)?);
    }
    let walls: Vec<f64> = runs.iter().map(|r| r.wall_s).collect();
    let stats = QueryStats {
        query: q.display().to_string(),
        planted: reference.is_some(),
        median_s: median(&walls).unwrap_or(f64::NAN),
        p95_s: percentile(&walls, 95.0).unwrap_or(f64::NAN),
        max_rss_mb: runs.iter().map(|r| r.max_rss_mb).fold(0.0, f64::max),
        runs,
    };
    eprintln!(
        "scale:   {}: median {:.2} s, p95 {:.2} s, {:.0} MB peak{}",
        file_name(q),
        stats.median_s,
        stats.p95_s,
        stats.max_rss_mb,
        match (reference, stats.runs.last().and_then(|r| r.planted_score)) {
            (Some(_), Some(s)) => format!(
                ", planted sample found, score {s:.3}, significance {:.1}",
                stats
                    .runs
                    .last()
                    .and_then(|r| r.planted_significance)
                    .unwrap_or(f64::NAN)
            ),
            (Some(_), None) => ", planted sample MISSED".to_string(),
            _ => String::new(),
        }
    );
    Ok(stats)
}

/// Runs `BIN --db DB identify --json Q` under `/usr/bin/time` and reads its wall time
/// and peak RSS. Not the child's rusage as seen from here: Linux starts a child's peak RSS
/// at its parent's RSS at fork, so a child of this (large) writer would report the
/// writer's size; `time` is small, so its child's figure is the identify process's own.
fn identify_once(bin: &Path, db: &Path, q: &Path, reference: Option<&str>) -> Result<IdentifyRun> {
    let rss_file = std::env::temp_dir().join(format!("cd-scale-rss-{}", std::process::id()));
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(bin)
        .arg("--db")
        .arg(db)
        .args(["identify", "--json"])
        .arg(q)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running /usr/bin/time {}", bin.display()))?;
    let wall_s = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("identify {} failed: {}", q.display(), output.status);
    }
    let max_rss_kb: f64 = std::fs::read_to_string(&rss_file)
        .with_context(|| format!("reading {}", rss_file.display()))?
        .trim()
        .parse()
        .context("peak RSS from /usr/bin/time")?;
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let parsed = parse_identify(&out)?;
    let value: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let synthetic_matches = parsed
        .matches
        .iter()
        .filter(|m| m.path.starts_with(SYNTHETIC_PREFIX))
        .count();
    let planted = reference.and_then(|r| {
        parsed
            .matches
            .iter()
            .filter(|m| m.path == r)
            .max_by(|x, y| x.score.total_cmp(&y.score))
    });
    let planted_score = planted.map(|m| m.score);
    let planted_significance =
        planted.and_then(|m| m.extra.get("significance").and_then(|v| v.as_f64()));
    Ok(IdentifyRun {
        wall_s,
        max_rss_mb: max_rss_kb / 1024.0,
        matches: parsed.matches.len(),
        synthetic_matches,
        planted_score,
        planted_significance,
        lookup_s: value["timings"]["lookup_s"].as_f64(),
        n_hits: value["n_hits"].as_u64(),
    })
}

fn self_peak_rss_mb() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        0.0
    } else {
        ru.ru_maxrss as f64 / 1024.0
    }
}

/// Bytes available to unprivileged writers on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes only into the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        bail!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            path: "/real/a.flac".into(),
            content_hash: "abc".into(),
            duration_s: 10.0,
            entries: (0..1000u32)
                .map(|i| (i % 37, i, (i % 300) as u16, (i % 50) as u16))
                .collect(),
            peaks: vec![1, 2, 3],
        }
    }

    #[test]
    fn synthetic_track_keeps_places_and_keys_but_not_their_pairing() {
        let t = template();
        let (info, entries) = synthetic_track(&t, 5, &mut Rng::new(1));
        assert_eq!(info.path, "synthetic:5");
        assert_eq!(info.duration_s, 10.0);
        // Every (time, freq, span) stays where it was, so anchors and partners do...
        let places: Vec<_> = entries.iter().map(|e| (e.1, e.2, e.3)).collect();
        let real: Vec<_> = t.entries.iter().map(|e| (e.1, e.2, e.3)).collect();
        assert_eq!(places, real);
        // ...every key keeps its count...
        let mut keys: Vec<u32> = entries.iter().map(|e| e.0).collect();
        let mut real_keys: Vec<u32> = t.entries.iter().map(|e| e.0).collect();
        keys.sort_unstable();
        real_keys.sort_unstable();
        assert_eq!(keys, real_keys);
        // ...but keys and places are paired anew.
        let unmoved = entries
            .iter()
            .zip(&t.entries)
            .filter(|(a, b)| a.0 == b.0)
            .count();
        assert!(unmoved < 60, "{unmoved} postings kept their key");
    }

    #[test]
    fn free_bytes_of_tmp_is_positive() {
        assert!(free_bytes(&std::env::temp_dir()).expect("statvfs") > 0);
    }
}
