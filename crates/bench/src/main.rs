//! cratedigger-bench: builds a benchmark of songs that sample reference recordings
//! (with sox, rubberband and ffmpeg, never the engine's own DSP), runs the cratedigger
//! CLI on it and scores the answers.

mod corpus;
mod dedup;
mod load;
mod loadgen;
mod oracle;
mod plot;
mod queries;
mod run;
mod scale;
mod score;
mod shared;
mod shortlist;
mod songs;
mod stores;
mod sweep;
mod types;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cratedigger-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SplitArg {
    Tune,
    Heldout,
}

impl SplitArg {
    fn name(self) -> String {
        match self {
            SplitArg::Tune => "tune".into(),
            SplitArg::Heldout => "heldout".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SuiteArg {
    Core,
    Full,
}

impl SuiteArg {
    fn name(self) -> String {
        match self {
            SuiteArg::Core => "core".into(),
            SuiteArg::Full => "full".into(),
        }
    }
}

/// Comma-separated thresholds (a newtype so that clap takes one value).
#[derive(Clone, Debug)]
struct Thresholds(Vec<f64>);

fn parse_thresholds(s: &str) -> Result<Thresholds, String> {
    s.split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<Vec<f64>, String>>()
        .map(Thresholds)
}

#[derive(Subcommand)]
enum Cmd {
    /// Choose references, background-only music and drum loops; split tune/heldout.
    /// Writes OUT/refs.txt and OUT/split.json.
    Corpus {
        /// Folder filled by /work/shared/corpus/fetch.sh (with files.txt).
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of reference tracks to index (0 = every eligible track).
        #[arg(long, default_value_t = 0)]
        refs: usize,
        /// Music tracks reserved as never-indexed background.
        #[arg(long, default_value_t = 8)]
        background: usize,
        /// Share of references in the tune split, by hash of the path.
        #[arg(long, default_value_t = 70)]
        tune_percent: u64,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Build query songs into OUT/queries/*.mp3 and their truth into OUT/truth.json.
    Queries {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of queries (default 60 for core, 160 for full); >= 30 % have no sample.
        #[arg(long)]
        n: Option<usize>,
        #[arg(long, value_enum, default_value = "tune")]
        split: SplitArg,
        #[arg(long, value_enum, default_value = "core")]
        suite: SuiteArg,
        /// Queries built in parallel.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Keep the intermediate WAVs in OUT/tmp/<query>/.
        #[arg(long)]
        keep_tmp: bool,
    },
    /// Index OUT/refs.txt with cratedigger, identify every query, save and score.
    Run {
        /// The cratedigger binary.
        #[arg(long)]
        bin: PathBuf,
        /// Database folder for cratedigger --db.
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Only queries of this split (default: all in truth.json).
        #[arg(long, value_enum)]
        split: Option<SplitArg>,
        #[arg(long, value_enum)]
        suite: Option<SuiteArg>,
        /// Reuse the existing database (index timings of the last run are kept).
        #[arg(long)]
        skip_index: bool,
        /// Do not time ffmpeg decoding of the references.
        #[arg(long)]
        skip_decode_floor: bool,
        /// Files per `index` call.
        #[arg(long, default_value_t = 200)]
        chunk: usize,
        /// identify calls in parallel (1 keeps latencies clean).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Ignore matches scoring below this in the main table.
        #[arg(long, default_value_t = 0.0)]
        min_score: f64,
        /// Comma-separated score thresholds for the FP/recall sweep (default: automatic).
        #[arg(long, value_parser = parse_thresholds)]
        score_threshold: Option<Thresholds>,
        /// Match field used as the score (e.g. significance).
        #[arg(long, default_value = "score")]
        score_field: String,
    },
    /// Identify whole songs that sample nothing in the store (corpus music that is not a
    /// reference nor a known copy of one, plus any --extra folder) and report every match:
    /// the false-positive rate on what users actually identify. Writes OUT/songs.json.
    Songs {
        /// The cratedigger binary.
        #[arg(long)]
        bin: PathBuf,
        /// The store holding the references (as `run` built it).
        #[arg(long)]
        db: PathBuf,
        /// Folder filled by /work/shared/corpus/fetch.sh (with files.txt).
        #[arg(long)]
        corpus: PathBuf,
        /// Benchmark folder (split.json).
        #[arg(long)]
        out: PathBuf,
        /// More folders of songs that are in no store (e.g. another fetched package).
        #[arg(long)]
        extra: Vec<PathBuf>,
    },
    /// Compare fingerprint settings fast: the engine's fingerprint and matcher over an
    /// in-memory index of the references, scored against truth.json (settings come from
    /// environment variables, see crates/bench/src/sweep.rs).
    Sweep {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "tune")]
        split: SplitArg,
        #[arg(long, value_enum, default_value = "core")]
        suite: SuiteArg,
        /// Stop-word cap as a multiple of the mean postings per key (the engine uses 6).
        #[arg(long, default_value_t = 6.0)]
        cap_factor: f64,
        #[arg(long, value_parser = parse_thresholds)]
        score_threshold: Option<Thresholds>,
    },
    /// Index the first references and identify the first queries with the LMDB store and
    /// with a Redis Cluster store in one run; report the cost of each and whether they
    /// answer the same.
    Stores {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// How many references to index (the first of OUT/refs.txt).
        #[arg(long, default_value_t = 12)]
        refs: usize,
        /// How many queries to identify (the first of OUT/truth.json).
        #[arg(long, default_value_t = 20)]
        queries: usize,
        /// A running cluster (redis://HOST:PORT,...); default: start a 3-master one.
        #[arg(long)]
        store: Option<String>,
    },
    /// Load-test `cratedigger serve` on loopback: a fixed number of identify requests at a
    /// fixed concurrency for at most a fixed time; answers by status, latency
    /// percentiles, throughput. Fails on any answer but 200 or 503 with Retry-After.
    Load {
        #[arg(long)]
        bin: PathBuf,
        /// The store to serve; created from the first --refs references of OUT/refs.txt
        /// when it does not exist.
        #[arg(long)]
        db: PathBuf,
        /// Benchmark folder (queries in OUT/queries, references in OUT/refs.txt).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Folder of query songs (default OUT/queries); the first --requests are used.
        #[arg(long)]
        queries: Option<PathBuf>,
        #[arg(long, default_value_t = 12)]
        refs: usize,
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The server's --max-concurrent-identify.
        #[arg(long, default_value_t = 2)]
        max_concurrent_identify: usize,
        /// No request is started after this many seconds.
        #[arg(long, default_value_t = 600.0)]
        max_seconds: f64,
        /// After a 503, wait this many ms and send the same song again (0: count it and
        /// move on to the next request).
        #[arg(long, default_value_t = 0)]
        retry_ms: u64,
        /// Write the report here as JSON too.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Grow an LMDB store with synthetic postings (real references first, then their
    /// postings with shuffled times under new track ids) and measure store size and
    /// identify latency / peak memory at each size; writes a JSON report.
    Scale {
        /// The cratedigger binary used for identify.
        #[arg(long)]
        bin: PathBuf,
        /// Folder of the store to build (must not hold one); removed at the end unless --keep.
        #[arg(long)]
        db: PathBuf,
        /// File listing the real references, one path a line (e.g. OUT/refs.txt).
        #[arg(long)]
        base: PathBuf,
        /// Comma-separated checkpoints in hours of audio (real included).
        #[arg(long, value_parser = parse_thresholds, default_value = "10,100,1000")]
        hours: Thresholds,
        /// Comma-separated queries timed at each checkpoint.
        #[arg(long, value_delimiter = ',')]
        queries: Vec<PathBuf>,
        /// Comma-separated queries whose sample's reference is a real track (see --truth).
        #[arg(long, value_delimiter = ',')]
        planted: Vec<PathBuf>,
        /// truth.json naming the planted queries' references.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// identify runs per query and checkpoint.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where the JSON report goes (rewritten after every checkpoint).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The store's merge policy (LmdbOptions::delta_fraction; the store's default is 0.25).
        #[arg(long, default_value_t = 0.25)]
        delta_fraction: f64,
        /// Stop growing after this many seconds of growing (merges included).
        #[arg(long, default_value_t = 2700.0)]
        max_grow_s: f64,
        /// Stop growing when less than this many GB would stay free on the store's disk.
        #[arg(long, default_value_t = 10.0)]
        min_free_gb: f64,
        /// Keep the store at the end.
        #[arg(long)]
        keep: bool,
        /// Continue growing the store an earlier run left in --db, appending to --out.
        #[arg(long)]
        resume: bool,
        /// Skip a query whose peak RSS, extrapolated from the previous checkpoint, exceeds this.
        #[arg(long, default_value_t = 6.0)]
        max_identify_gb: f64,
        /// Skip a query whose median time, extrapolated likewise, exceeds this.
        #[arg(long, default_value_t = 120.0)]
        max_identify_s: f64,
    },
    /// Draw PNG plots: recall against speed factor, SNR and excerpt length (from a scored
    /// full-suite report.json) and identify latency / store size against store hours (from
    /// a `scale` report).
    Plot {
        /// report.json of a scored `full`-suite run.
        #[arg(long)]
        report: Option<PathBuf>,
        /// JSON report written by `scale`.
        #[arg(long)]
        scale: Option<PathBuf>,
        /// Folder for the PNG files (e.g. docs/plots).
        #[arg(long)]
        out: PathBuf,
    },
    /// Score saved results offline.
    Score {
        #[arg(long)]
        truth: PathBuf,
        /// Folder of <query-stem>.json outputs (and _run.json timings).
        #[arg(long)]
        results: PathBuf,
        /// Where report.md/report.json go (default: the parent of --results).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum)]
        split: Option<SplitArg>,
        #[arg(long, value_enum)]
        suite: Option<SuiteArg>,
        #[arg(long, default_value_t = 0.0)]
        min_score: f64,
        #[arg(long, value_parser = parse_thresholds)]
        score_threshold: Option<Thresholds>,
        /// Match field used as the score (e.g. significance).
        #[arg(long, default_value = "score")]
        score_field: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Corpus {
            corpus,
            out,
            seed,
            refs,
            background,
            tune_percent,
            jobs,
        } => corpus::run_corpus(&corpus::CorpusArgs {
            corpus,
            out,
            seed,
            refs,
            background,
            tune_percent: tune_percent.min(100),
            jobs,
        }),
        Cmd::Queries {
            corpus,
            out,
            seed,
            n,
            split,
            suite,
            jobs,
            keep_tmp,
        } => queries::run_queries(&queries::QueryArgs {
            corpus,
            out,
            seed,
            n,
            split: split.name(),
            suite: suite.name(),
            jobs,
            keep_tmp,
        }),
        Cmd::Run {
            bin,
            db,
            out,
            split,
            suite,
            skip_index,
            skip_decode_floor,
            chunk,
            jobs,
            min_score,
            score_threshold,
            score_field,
        } => run::run_bench(&run::RunArgs {
            bin,
            db,
            out,
            split: split.map(SplitArg::name),
            suite: suite.map(SuiteArg::name),
            skip_index,
            skip_decode_floor,
            chunk,
            jobs,
            min_score,
            thresholds: score_threshold.map(|t| t.0),
            score_field,
        }),
        Cmd::Stores {
            bin,
            out,
            refs,
            queries,
            store,
        } => stores::run_stores(&stores::StoresArgs {
            bin,
            out,
            refs,
            queries,
            store,
        }),
        Cmd::Load {
            bin,
            db,
            out,
            queries,
            refs,
            requests,
            concurrency,
            max_concurrent_identify,
            max_seconds,
            retry_ms,
            json,
        } => load::run_load_test(&load::LoadArgs {
            bin,
            db,
            queries,
            out,
            refs,
            requests,
            concurrency,
            max_concurrent_identify,
            max_seconds,
            retry_ms,
            json,
        }),
        Cmd::Scale {
            bin,
            db,
            base,
            hours,
            queries,
            planted,
            truth,
            runs,
            out,
            seed,
            delta_fraction,
            max_grow_s,
            min_free_gb,
            keep,
            resume,
            max_identify_gb,
            max_identify_s,
        } => scale::run_scale(&scale::ScaleArgs {
            bin,
            db,
            base,
            hours: hours.0,
            queries,
            planted,
            truth,
            runs,
            out,
            seed,
            delta_fraction,
            max_grow_s,
            min_free_gb,
            keep,
            resume,
            max_identify_gb,
            max_identify_s,
        }),
        Cmd::Plot { report, scale, out } => plot::run_plot(&plot::PlotArgs { report, scale, out }),
        Cmd::Score {
            truth,
            results,
            out,
            split,
            suite,
            min_score,
            score_threshold,
            score_field,
        } => score::run_score(&score::ScoreArgs {
            truth,
            results,
            out,
            split: split.map(SplitArg::name),
            suite: suite.map(SuiteArg::name),
            min_score,
            thresholds: score_threshold.map(|t| t.0),
            score_field,
        })
        .map(|_| ()),
        Cmd::Songs {
            bin,
            db,
            corpus,
            out,
            extra,
        } => songs::run_songs(&songs::SongsArgs {
            bin,
            db,
            corpus,
            out,
            extra,
        }),
        Cmd::Sweep {
            out,
            split,
            suite,
            cap_factor,
            score_threshold,
        } => sweep::run_sweep(&sweep::SweepArgs {
            out,
            split: split.name(),
            suite: suite.name(),
            cap_factor,
            thresholds: score_threshold.map_or_else(
                || {
                    let mid = matcher::MatchParams::default().min_significance;
                    vec![mid - 10.0, mid, mid + 10.0]
                },
                |t| t.0,
            ),
        }),
    }
}
