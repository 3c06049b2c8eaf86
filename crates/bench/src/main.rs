//! cratedigger-bench: builds a benchmark of songs that sample reference recordings
//! (with sox, rubberband and ffmpeg, never the engine's own DSP), runs the cratedigger
//! CLI on it and scores the answers.

mod corpus;
mod dedup;
mod load;
mod loadgen;
mod queries;
mod run;
mod score;
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
            thresholds: score_threshold.map_or_else(|| vec![20.0, 30.0, 40.0], |t| t.0),
        }),
    }
}
