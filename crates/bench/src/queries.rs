//! `queries`: builds "new songs" (background music + a drum loop) that sample excerpts
//! of reference tracks under known transforms, with sox, rubberband and ffmpeg only.

use crate::types::{Split, Track, TruthQuery, TruthSample};
use crate::util::{
    Rng, canonical, db, file_name, fmt_s, from_db, probe_duration, read_json, run, sox_duration,
    sox_rms, write_json,
};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// RMS (full scale 1) of the background and of the drums before mixing: low enough
/// that summing three signals never clips sox's combiner.
const BED_RMS: f64 = 0.025;
/// Excerpts quieter than this are re-drawn (silence in ambient tracks).
const MIN_EXCERPT_RMS: f64 = 0.008;
const MIN_BG_RMS: f64 = 0.005;
const EDGE_S: f64 = 2.0;

pub struct QueryArgs {
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub n: Option<usize>,
    pub split: String,
    pub suite: String,
    pub jobs: usize,
    pub keep_tmp: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Xf {
    Identity,
    /// sox `speed`: tempo and pitch together.
    Speed(f64),
    /// rubberband -T: tempo only.
    Tempo(f64),
    /// rubberband -p: pitch only (semitones).
    Pitch(f64),
    Lowpass(f64),
    Highpass(f64),
}

impl Xf {
    /// (speed, tempo, pitch in semitones) as recorded in truth.json.
    pub fn truth(self) -> (f64, f64, f64) {
        match self {
            Xf::Speed(s) => (s, s, (12e6 * s.log2()).round() / 1e6),
            Xf::Tempo(t) => (1.0, t, 0.0),
            Xf::Pitch(p) => (1.0, 1.0, p),
            Xf::Identity | Xf::Lowpass(_) | Xf::Highpass(_) => (1.0, 1.0, 0.0),
        }
    }

    fn describe(self) -> Value {
        match self {
            Xf::Identity => json!({"tool": "none"}),
            Xf::Speed(s) => json!({"tool": "sox", "effect": format!("speed {s} rate 44100")}),
            Xf::Tempo(t) => json!({"tool": "rubberband", "effect": format!("-T {t}")}),
            Xf::Pitch(p) => json!({"tool": "rubberband", "effect": format!("-p {p}")}),
            Xf::Lowpass(f) => json!({"tool": "sox", "effect": format!("lowpass {f}")}),
            Xf::Highpass(f) => json!({"tool": "sox", "effect": format!("highpass {f}")}),
        }
    }

    fn apply(self, src: &Path, dst: &Path) -> Result<()> {
        let sox = |effect: &[String]| -> Result<()> {
            run(sox_cmd().arg(src).arg(dst).args(effect))?;
            Ok(())
        };
        match self {
            Xf::Identity => sox(&[])?,
            Xf::Speed(s) => sox(&["speed".into(), s.to_string(), "rate".into(), "44100".into()])?,
            Xf::Lowpass(f) => sox(&["lowpass".into(), f.to_string()])?,
            Xf::Highpass(f) => sox(&["highpass".into(), f.to_string()])?,
            Xf::Tempo(t) => {
                run(Command::new("rubberband")
                    .args(["-q", "-T", &t.to_string()])
                    .arg(src)
                    .arg(dst))?;
            }
            Xf::Pitch(p) => {
                run(Command::new("rubberband")
                    .args(["-q", "-p", &p.to_string()])
                    .arg(src)
                    .arg(dst))?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    NoRef,
    /// One excerpt of `len` seconds, transformed, mixed `snr_db` above the bed.
    Single {
        xf: Xf,
        len: f64,
        snr_db: f64,
    },
    /// A 2 s excerpt looped 4-16 times.
    Loop,
    /// Four 2 s slices of an 8 s region, reordered.
    Chop,
    /// Two excerpts of two references, each with a core transform.
    Two,
}

#[derive(Clone, Debug)]
pub struct Cond {
    pub name: String,
    pub kind: Kind,
}

const CORE_SPEEDS: &[f64] = &[0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4];
const CORE_TEMPOS: &[f64] = &[0.85, 1.15];
const CORE_PITCHES: &[f64] = &[-3.0, 3.0];

fn single(name: String, xf: Xf, len: f64, snr_db: f64) -> Cond {
    Cond {
        name,
        kind: Kind::Single { xf, len, snr_db },
    }
}

fn core_xfs() -> Vec<Xf> {
    let mut v: Vec<Xf> = CORE_SPEEDS.iter().map(|&s| Xf::Speed(s)).collect();
    v.extend(CORE_TEMPOS.iter().map(|&t| Xf::Tempo(t)));
    v.extend(CORE_PITCHES.iter().map(|&p| Xf::Pitch(p)));
    v
}

/// The sample-bearing conditions of a suite (the no-reference condition is added apart).
pub fn conditions(suite: &str) -> Result<Vec<Cond>> {
    let mut v = Vec::new();
    for &s in CORE_SPEEDS {
        v.push(single(format!("speed_{s:.2}"), Xf::Speed(s), 8.0, 0.0));
    }
    for &t in CORE_TEMPOS {
        v.push(single(format!("tempo_{t:.2}"), Xf::Tempo(t), 8.0, 0.0));
    }
    for &p in CORE_PITCHES {
        v.push(single(format!("pitch_{p:+}"), Xf::Pitch(p), 8.0, 0.0));
    }
    match suite {
        "core" => {}
        "full" => {
            for s in [0.5, 2.0] {
                v.push(single(format!("speed_{s:.2}"), Xf::Speed(s), 8.0, 0.0));
            }
            for t in [0.5, 0.7, 1.4, 2.0] {
                v.push(single(format!("tempo_{t:.2}"), Xf::Tempo(t), 8.0, 0.0));
            }
            for p in [-12.0, -6.0, 6.0, 12.0] {
                v.push(single(format!("pitch_{p:+}"), Xf::Pitch(p), 8.0, 0.0));
            }
            v.push(single("lowpass_2500".into(), Xf::Lowpass(2500.0), 8.0, 0.0));
            v.push(single("highpass_500".into(), Xf::Highpass(500.0), 8.0, 0.0));
            for l in [1.0, 2.0, 4.0, 15.0, 30.0] {
                v.push(single(format!("len_{l}"), Xf::Identity, l, 0.0));
            }
            for snr in [6.0, -3.0, -6.0, -10.0, -15.0] {
                v.push(single(format!("snr_{snr:+}"), Xf::Identity, 8.0, snr));
            }
            v.push(Cond {
                name: "loop".into(),
                kind: Kind::Loop,
            });
            v.push(Cond {
                name: "chop".into(),
                kind: Kind::Chop,
            });
            v.push(Cond {
                name: "two".into(),
                kind: Kind::Two,
            });
        }
        other => bail!("unknown suite {other:?} (expected core or full)"),
    }
    Ok(v)
}

/// Condition of every query: round-robin over the sample conditions, at least 30 %
/// without any reference, in a seeded order.
pub fn assign(suite: &str, n: usize, rng: &mut Rng) -> Result<Vec<Cond>> {
    let conds = conditions(suite)?;
    let n_none = (n * 3).div_ceil(10).max(1);
    let n_samples = n.saturating_sub(n_none);
    if n_samples < conds.len() {
        eprintln!(
            "queries: warning: {n_samples} sample queries for {} conditions: some conditions get none",
            conds.len()
        );
    }
    let mut v: Vec<Cond> = (0..n_samples)
        .map(|i| conds[i % conds.len()].clone())
        .collect();
    v.extend((0..n_none).map(|_| Cond {
        name: "none".into(),
        kind: Kind::NoRef,
    }));
    rng.shuffle(&mut v);
    Ok(v)
}

struct Ctx {
    refs: Vec<Track>,
    background: Vec<Track>,
    loops: Vec<String>,
    tmp: PathBuf,
    qdir: PathBuf,
    split: String,
    suite: String,
}

/// A transformed excerpt ready to place, with its samples timed from its own start.
struct Piece {
    wav: PathBuf,
    len_s: f64,
    snr_db: f64,
    samples: Vec<TruthSample>,
    desc: Value,
}

/// sox in repeatable mode: its dither is otherwise seeded from the clock.
fn sox_cmd() -> Command {
    let mut c = Command::new("sox");
    c.arg("-R");
    c
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn decode(src: &Path, start: f64, len: f64, dst: &Path) -> Result<()> {
    run(Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-ss",
            &fmt_s(start),
            "-t",
            &fmt_s(len),
            "-i",
        ])
        .arg(src)
        .args(["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le"])
        .arg(dst))?;
    Ok(())
}

/// Decodes a non-silent excerpt of `len` s of some reference (not in `avoid`).
fn excerpt(
    ctx: &Ctx,
    rng: &mut Rng,
    len: f64,
    avoid: &[String],
    dst: &Path,
) -> Result<(Track, f64)> {
    let usable: Vec<&Track> = ctx
        .refs
        .iter()
        .filter(|t| t.duration_s >= len + 8.0 && !avoid.contains(&t.path))
        .collect();
    if usable.is_empty() {
        bail!("no reference track is long enough for a {len} s excerpt");
    }
    for _ in 0..16 {
        let t = usable[rng.below(usable.len())];
        let start = r3(rng.range(3.0, t.duration_s - len - 3.0));
        decode(Path::new(&t.path), start, len, dst)?;
        let got = sox_duration(dst)?;
        if (got - len).abs() > 0.01 {
            continue;
        }
        let half = len / 2.0;
        if sox_rms(dst, None)? >= MIN_EXCERPT_RMS
            && sox_rms(dst, Some((0.0, half)))? >= MIN_EXCERPT_RMS / 3.0
            && sox_rms(dst, Some((half, half)))? >= MIN_EXCERPT_RMS / 3.0
        {
            return Ok(((*t).clone(), start));
        }
    }
    bail!("no loud enough {len} s excerpt found in 16 tries")
}

fn single_piece(
    ctx: &Ctx,
    rng: &mut Rng,
    dir: &Path,
    tag: &str,
    (xf, len, snr_db): (Xf, f64, f64),
    avoid: &[String],
) -> Result<Piece> {
    let ex = dir.join(format!("{tag}_excerpt.wav"));
    let tx = dir.join(format!("{tag}_sample.wav"));
    let (t, start) = excerpt(ctx, rng, len, avoid, &ex)?;
    xf.apply(&ex, &tx)?;
    let len_q = sox_duration(&tx)?;
    let (speed, tempo, pitch) = xf.truth();
    Ok(Piece {
        wav: tx,
        len_s: len_q,
        snr_db,
        samples: vec![TruthSample {
            ref_path: t.path.clone(),
            ref_start_s: start,
            ref_end_s: r3(start + len),
            query_start_s: 0.0,
            query_end_s: len_q,
            speed,
            tempo,
            pitch_semitones: pitch,
            loops: 1,
        }],
        desc: json!({"excerpt_s": len, "transform": xf.describe(), "snr_db": snr_db}),
    })
}

fn loop_piece(ctx: &Ctx, rng: &mut Rng, dir: &Path) -> Result<Piece> {
    let len = 2.0;
    let reps = rng.int_in(4, 16);
    let ex = dir.join("loop_excerpt.wav");
    let tx = dir.join("loop_sample.wav");
    let (t, start) = excerpt(ctx, rng, len, &[], &ex)?;
    run(sox_cmd()
        .arg(&ex)
        .arg(&tx)
        .args(["repeat", &(reps - 1).to_string()]))?;
    let len_q = sox_duration(&tx)?;
    Ok(Piece {
        wav: tx,
        len_s: len_q,
        snr_db: 0.0,
        samples: vec![TruthSample {
            ref_path: t.path.clone(),
            ref_start_s: start,
            ref_end_s: r3(start + len),
            query_start_s: 0.0,
            query_end_s: len_q,
            speed: 1.0,
            tempo: 1.0,
            pitch_semitones: 0.0,
            loops: reps,
        }],
        desc: json!({"excerpt_s": len, "loops": reps, "transform": Xf::Identity.describe(), "snr_db": 0.0}),
    })
}

fn chop_piece(ctx: &Ctx, rng: &mut Rng, dir: &Path) -> Result<Piece> {
    let (slices, slice_s) = (4usize, 2.0);
    let ex = dir.join("chop_excerpt.wav");
    let (t, start) = excerpt(ctx, rng, slices as f64 * slice_s, &[], &ex)?;
    let mut order: Vec<usize> = (0..slices).collect();
    while order.iter().enumerate().all(|(i, &p)| i == p) {
        rng.shuffle(&mut order);
    }
    let mut parts = Vec::new();
    for (m, &p) in order.iter().enumerate() {
        let part = dir.join(format!("chop_{m}.wav"));
        run(sox_cmd().arg(&ex).arg(&part).args([
            "trim",
            &fmt_s(p as f64 * slice_s),
            &fmt_s(slice_s),
        ]))?;
        parts.push(part);
    }
    let tx = dir.join("chop_sample.wav");
    run(sox_cmd().args(&parts).arg(&tx))?;
    let samples = order
        .iter()
        .enumerate()
        .map(|(m, &p)| TruthSample {
            ref_path: t.path.clone(),
            ref_start_s: r3(start + p as f64 * slice_s),
            ref_end_s: r3(start + (p + 1) as f64 * slice_s),
            query_start_s: m as f64 * slice_s,
            query_end_s: (m + 1) as f64 * slice_s,
            speed: 1.0,
            tempo: 1.0,
            pitch_semitones: 0.0,
            loops: 1,
        })
        .collect();
    Ok(Piece {
        len_s: sox_duration(&tx)?,
        wav: tx,
        snr_db: 0.0,
        samples,
        desc: json!({"excerpt_s": slices as f64 * slice_s, "slices": slices, "slice_s": slice_s, "order": order, "snr_db": 0.0}),
    })
}

fn pieces_for(ctx: &Ctx, kind: &Kind, rng: &mut Rng, dir: &Path) -> Result<Vec<Piece>> {
    Ok(match kind {
        Kind::NoRef => vec![],
        Kind::Single { xf, len, snr_db } => {
            vec![single_piece(ctx, rng, dir, "a", (*xf, *len, *snr_db), &[])?]
        }
        Kind::Loop => vec![loop_piece(ctx, rng, dir)?],
        Kind::Chop => vec![chop_piece(ctx, rng, dir)?],
        Kind::Two => {
            let xfs = core_xfs();
            let x1 = xfs[rng.below(xfs.len())];
            let x2 = xfs[rng.below(xfs.len())];
            let a = single_piece(ctx, rng, dir, "a", (x1, 8.0, 0.0), &[])?;
            let avoid = vec![a.samples[0].ref_path.clone()];
            let b = single_piece(ctx, rng, dir, "b", (x2, 8.0, 0.0), &avoid)?;
            vec![a, b]
        }
    })
}

/// Start times of pieces of the given lengths in a query of `q` s: in order, at least
/// EDGE_S from both ends and 1 s apart, the free time split at random.
fn place(lens: &[f64], q: f64, rng: &mut Rng) -> Vec<f64> {
    if lens.is_empty() {
        return vec![];
    }
    let min_gaps = 2.0 * EDGE_S + (lens.len() - 1) as f64;
    let free = (q - lens.iter().sum::<f64>() - min_gaps).max(0.0);
    let w: Vec<f64> = (0..=lens.len()).map(|_| rng.f64() + 1e-3).collect();
    let wsum: f64 = w.iter().sum();
    let mut t = EDGE_S;
    let mut starts = Vec::new();
    for (i, l) in lens.iter().enumerate() {
        t += free * w[i] / wsum;
        let s = r3(t);
        starts.push(s);
        t = s + l + 1.0;
    }
    starts
}

fn build_query(ctx: &Ctx, index: usize, cond: &Cond, seed: u64) -> Result<TruthQuery> {
    let stem = format!("{}_{}_q{:03}", ctx.split, ctx.suite, index + 1);
    let dir = ctx.tmp.join(&stem);
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng::derive(
        seed,
        &format!("query:{}:{}", ctx.split, ctx.suite),
        index as u64,
    );
    let pieces = pieces_for(ctx, &cond.kind, &mut rng, &dir)?;
    let lens: Vec<f64> = pieces.iter().map(|p| p.len_s).collect();
    let needed = lens.iter().sum::<f64>() + 2.0 * EDGE_S + lens.len() as f64 + 2.0;
    let q = (rng.range(30.0, 45.0).max(needed) * 100.0).round() / 100.0;
    let starts = place(&lens, q, &mut rng);

    // Background: a never-indexed music track, from a non-silent place.
    let bg_wav = dir.join("background.wav");
    let usable: Vec<&Track> = ctx
        .background
        .iter()
        .filter(|t| t.duration_s >= q + 6.0)
        .collect();
    if usable.is_empty() {
        bail!("no background track lasts {q} s");
    }
    let mut chosen = None;
    for _ in 0..16 {
        let t = usable[rng.below(usable.len())];
        let start = r3(rng.range(3.0, t.duration_s - q - 3.0));
        decode(Path::new(&t.path), start, q, &bg_wav)?;
        let rms = sox_rms(&bg_wav, None)?;
        if rms >= MIN_BG_RMS {
            chosen = Some((t, start, rms));
            break;
        }
    }
    let Some((bg, bg_start, bg_rms)) = chosen else {
        bail!("no loud enough background found in 16 tries");
    };

    // Drums: a sonic-pi loop repeated to the length.
    let loop_path = &ctx.loops[rng.below(ctx.loops.len())];
    let loop_s = sox_duration(Path::new(loop_path))?;
    let reps = (q / loop_s).ceil().max(1.0) as u64;
    let drums_wav = dir.join("drums.wav");
    run(sox_cmd()
        .arg(loop_path)
        .args(["-b", "16"])
        .arg(&drums_wav)
        .args(["repeat", &(reps - 1).to_string()])
        .args(["rate", "44100", "channels", "2", "trim", "0", &fmt_s(q)]))?;
    let drums_rms = sox_rms(&drums_wav, None)?;
    let drum_db = r3(rng.range(-4.0, 2.0));

    // Bed = background + drums at the chosen levels.
    let gb = BED_RMS / bg_rms;
    let gd = BED_RMS * from_db(drum_db) / drums_rms.max(1e-6);
    let bed = dir.join("bed.wav");
    run(sox_cmd()
        .args(["-m", "-v", &format!("{gb:.6}")])
        .arg(&bg_wav)
        .args(["-v", &format!("{gd:.6}")])
        .arg(&drums_wav)
        .args(["-b", "16"])
        .arg(&bed)
        .args(["trim", "0", &fmt_s(q)]))?;

    // Samples: each scaled so that its RMS is snr_db above the bed's over its interval.
    let mut mix = sox_cmd();
    if !pieces.is_empty() {
        mix.args(["-m", "-v", "1"]);
    }
    mix.arg(&bed);
    let mut samples = Vec::new();
    let mut placed_desc = Vec::new();
    for (k, (p, &qs)) in pieces.iter().zip(&starts).enumerate() {
        let local = sox_rms(&bed, Some((qs, p.len_s)))?;
        let own = sox_rms(&p.wav, None)?;
        let g = local * from_db(p.snr_db) / own.max(1e-6);
        let placed = dir.join(format!("placed_{k}.wav"));
        run(sox_cmd().arg(&p.wav).arg(&placed).args(["pad", &fmt_s(qs)]))?;
        // Check the placement and the level where the truth says the sample is.
        let measured = g * sox_rms(&placed, Some((qs, p.len_s)))?;
        mix.args(["-v", &format!("{g:.6}")]).arg(&placed);
        for s in &p.samples {
            let mut s = s.clone();
            s.query_start_s = r3(qs + s.query_start_s);
            s.query_end_s = r3(qs + s.query_end_s);
            samples.push(s);
        }
        let mut d = p.desc.clone();
        if let Value::Object(m) = &mut d {
            m.insert("query_start_s".into(), json!(qs));
            m.insert("length_in_query_s".into(), json!(r3(p.len_s)));
            m.insert("gain".into(), json!(r3(g)));
            m.insert("bed_rms_db".into(), json!(r3(db(local))));
            m.insert("measured_snr_db".into(), json!(r3(db(measured / local))));
        }
        placed_desc.push(d);
    }
    let mix_wav = dir.join("mix.wav");
    mix.args(["-b", "16"])
        .arg(&mix_wav)
        .args(["trim", "0", &fmt_s(q), "gain", "-n", "-1"]);
    let out = run(&mut mix)?;
    let clipped = String::from_utf8_lossy(&out.stderr).contains("clipped");

    let mp3 = ctx.qdir.join(format!("{stem}.mp3"));
    run(Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(&mix_wav)
        .args(["-c:a", "libmp3lame", "-b:a", "128k"])
        .arg(&mp3))?;
    let dur = probe_duration(&mp3)?;
    if (dur - q).abs() > 0.1 {
        bail!("{} lasts {dur:.3} s instead of {q:.3} s", mp3.display());
    }
    if clipped {
        eprintln!("queries: warning: sox reported clipping while mixing {stem}");
    }
    Ok(TruthQuery {
        query: mp3.to_string_lossy().into_owned(),
        condition: cond.name.clone(),
        split: ctx.split.clone(),
        suite: ctx.suite.clone(),
        params: json!({
            "duration_s": q,
            "mp3_duration_s": r3(dur),
            "background": bg.path,
            "background_start_s": bg_start,
            "drum_loop": loop_path,
            "drum_db_vs_background": drum_db,
            "samples": placed_desc,
            "clipped": clipped,
            "encoding": "ffmpeg libmp3lame 128k, 44.1 kHz stereo",
        }),
        samples,
    })
}

pub fn run_queries(a: &QueryArgs) -> Result<()> {
    let out = canonical(&a.out);
    let split: Split = read_json(&out.join("split.json"))
        .context("run `cratedigger-bench corpus` into the same --out first")?;
    let refs = split.refs(&a.split)?.to_vec();
    let mut loops = split.drum_loops.clone();
    if loops.is_empty() {
        loops = crate::corpus::drum_loops(&crate::corpus::list_files(&a.corpus)?);
    }
    if loops.is_empty() || split.background.is_empty() || refs.is_empty() {
        bail!(
            "split.json lacks drum loops, background or {} references",
            a.split
        );
    }
    for p in refs
        .iter()
        .map(|t| &t.path)
        .chain(split.background.iter().map(|t| &t.path))
        .chain(loops.iter())
    {
        if !Path::new(p).exists() {
            bail!(
                "{p} is missing: is the corpus at {} fetched?",
                a.corpus.display()
            );
        }
    }
    let n = a.n.unwrap_or(if a.suite == "full" { 160 } else { 60 });
    let mut rng = Rng::derive(a.seed, &format!("assign:{}:{}", a.split, a.suite), 0);
    let conds = assign(&a.suite, n, &mut rng)?;

    let qdir = out.join("queries");
    let tmp = out.join("tmp");
    std::fs::create_dir_all(&qdir)?;
    std::fs::create_dir_all(&tmp)?;
    let prefix = format!("{}_{}_q", a.split, a.suite);
    for e in std::fs::read_dir(&qdir)? {
        let p = e?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix))
        {
            std::fs::remove_file(&p)?;
        }
    }
    let ctx = Ctx {
        refs,
        background: split.background.clone(),
        loops,
        tmp,
        qdir,
        split: a.split.clone(),
        suite: a.suite.clone(),
    };
    eprintln!(
        "queries: building {n} {} queries from {} {} references on {} threads",
        a.suite,
        ctx.refs.len(),
        a.split,
        a.jobs
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.jobs.max(1))
        .build()?;
    let t0 = Instant::now();
    let results: Vec<Result<TruthQuery>> = pool.install(|| {
        conds
            .par_iter()
            .enumerate()
            .map(|(i, c)| {
                let t = Instant::now();
                let r = build_query(&ctx, i, c, a.seed)
                    .with_context(|| format!("query {} ({})", i + 1, c.name));
                match &r {
                    Ok(q) => eprintln!(
                        "  {} {:<14} {:.1} s",
                        file_name(Path::new(&q.query)),
                        c.name,
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => eprintln!("  FAILED: {e:#}"),
                }
                if r.is_ok() && !a.keep_tmp {
                    let stem = format!("{}_{}_q{:03}", ctx.split, ctx.suite, i + 1);
                    let _ = std::fs::remove_dir_all(ctx.tmp.join(stem));
                }
                r
            })
            .collect()
    });
    let mut made = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(q) => made.push(q),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {n} queries failed (truth.json not written); first: {}",
            failed.len(),
            failed[0]
        );
    }

    // truth.json holds every split and suite built into OUT: replace ours.
    let truth_path = out.join("truth.json");
    let mut truth: Vec<TruthQuery> = if truth_path.exists() {
        read_json(&truth_path)?
    } else {
        vec![]
    };
    truth.retain(|q| !(q.split == a.split && q.suite == a.suite));
    truth.extend(made);
    truth.sort_by(|x, y| x.query.cmp(&y.query));
    write_json(&truth_path, &truth)?;

    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &conds {
        *counts.entry(c.name.as_str()).or_default() += 1;
    }
    eprintln!(
        "queries: {n} queries in {:.0} s; per condition: {}",
        t0.elapsed().as_secs_f64(),
        counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{}", truth_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_of_transforms() {
        let (s, t, p) = Xf::Speed(0.8).truth();
        assert_eq!((s, t), (0.8, 0.8));
        assert!((p - 12.0 * 0.8f64.log2()).abs() < 1e-6);
        assert_eq!(Xf::Tempo(1.15).truth(), (1.0, 1.15, 0.0));
        assert_eq!(Xf::Pitch(-3.0).truth(), (1.0, 1.0, -3.0));
    }

    #[test]
    fn assignment_has_30_percent_without_reference() -> Result<()> {
        let mut r = Rng::new(1);
        let v = assign("core", 60, &mut r)?;
        assert_eq!(v.len(), 60);
        assert!(v.iter().filter(|c| c.kind == Kind::NoRef).count() >= 18);
        assert_eq!(conditions("core")?.len(), 11);
        assert!(conditions("full")?.len() > 30);
        Ok(())
    }

    #[test]
    fn placement_fits() {
        let mut r = Rng::new(5);
        for _ in 0..100 {
            let lens = [8.0, 11.4];
            let q = 35.0;
            let s = place(&lens, q, &mut r);
            assert!(s[0] >= EDGE_S - 1e-9);
            assert!(s[1] >= s[0] + lens[0] + 1.0 - 1e-3);
            assert!(s[1] + lens[1] <= q - EDGE_S + 1e-2);
        }
    }
}
