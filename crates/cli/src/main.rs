//! The `cratedigger` command line: index a reference library, then identify the samples
//! in new songs, scan the library for the samples its tracks share, or serve it all
//! over HTTP.

mod catalogue;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::{Engine, IndexEvent, IndexOutcome};
use indicatif::{ProgressBar, ProgressStyle};

/// Finds the recordings a song samples, even when they were sped up, slowed down,
/// time-stretched, pitch-shifted, looped or buried under drums.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The store folder [default: $CRATEDIGGER_DB, else ~/.local/share/cratedigger/db].
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// A Redis Cluster store instead of a folder: redis://HOST:PORT[,HOST:PORT...][?prefix=P]
    /// [default: $CRATEDIGGER_STORE when --db is not given].
    #[arg(long, global = true, value_name = "URL", conflicts_with = "db")]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Index audio files and folders as references (re-indexing unchanged files is free).
    Index {
        /// Files or folders; folders are searched recursively for audio files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Find every stored reference each query samples.
    Identify {
        /// Audio files of any length.
        #[arg(required = true)]
        queries: Vec<PathBuf>,
        /// Print JSON (one object per query, one per line) instead of a table.
        #[arg(long)]
        json: bool,
        /// Report matches whose significance (-log10 chance probability) reaches this on
        /// their hash hits alone (default 50); weaker candidates are still reported when
        /// peak-level verification confirms them.
        #[arg(long)]
        min_significance: Option<f64>,
        /// Memory for a query's hits, in MB: a query with more (a long song against a big
        /// library) is matched in passes over the references, each within it; same result,
        /// one more lookup per pass.
        #[arg(long, value_name = "MB", default_value_t = engine::DEFAULT_IDENTIFY_MEMORY_MB as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        identify_memory_mb: u64,
        /// Also search the query resampled at a few speeds (0.55, 0.75, 1.33, 1.8): finds
        /// more of the samples whose speed is far from 1 (slowed or sped up by a third or
        /// more), and takes 3-4 times as long (and 64 KB of memory a second of query).
        #[arg(long)]
        deep: bool,
    },
    /// Remove tracks from the store, by id or by the path they were indexed from.
    Remove {
        #[arg(required = true)]
        tracks: Vec<String>,
    },
    /// List the stored tracks.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the store's size and contents.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Give back the disk space of removed tracks and merges: rewrites the store's file
    /// compactly (a --db folder; no other process may have the store open meanwhile).
    Compact,
    /// Find tracks by title, artist, album or file name (case, accents and typos forgiven).
    Find {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Edit a track's metadata; an empty value clears a field (`--year ""`).
    Tag(catalogue::TagArgs),
    /// Import metadata from a CSV or JSON file, rows matched to tracks by path or content hash.
    ImportTags {
        /// A CSV file with a header row, or a JSON array of objects; columns: path,
        /// content_hash, title, artist, album, year, musicbrainz_recording_id,
        /// musicbrainz_release_id.
        file: PathBuf,
        /// The file's format [default: from its extension].
        #[arg(long, value_enum)]
        format: Option<catalogue::TableFormat>,
    },
    /// Search every stored track for material of the others; only pairs not examined
    /// before are examined.
    Scan {
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Memory for one track's hits, in MB (the scan searches one track per thread,
        /// each within this): a track with more is matched in passes over the references;
        /// same result, one more lookup per pass.
        #[arg(long, value_name = "MB", default_value_t = engine::DEFAULT_IDENTIFY_MEMORY_MB as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        identify_memory_mb: u64,
    },
    /// What does this track sample? (run `scan` first)
    Samples(catalogue::WhichTrack),
    /// Which tracks sample this one? (run `scan` first)
    SampledBy(catalogue::WhichTrack),
    /// The sample graph.
    Graph {
        #[command(subcommand)]
        command: catalogue::GraphCommand,
    },
    /// Serve the HTTP API (described at /api/openapi.json) and the web page.
    Serve(ServeArgs),
}

/// Flags of `serve`; every default is the safe one.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (the address is printed).
    #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], server::DEFAULT_PORT)))]
    bind: std::net::SocketAddr,
    /// Token that write endpoints (adding and removing tracks, scanning) require as
    /// `Authorization: Bearer TOKEN`. Without one, every write is refused.
    #[arg(long, env = server::TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Largest upload accepted, in MB (larger is refused with 413).
    #[arg(long, default_value_t = 100)]
    max_upload_mb: u64,
    /// Songs decoded at once (identify, waveforms); more get 503 and Retry-After.
    #[arg(long, default_value_t = 2)]
    max_concurrent_identify: usize,
    /// Where uploaded references are stored [default: STORE/uploads].
    #[arg(long)]
    upload_dir: Option<PathBuf>,
    /// Seconds before an unanswered request gets 408.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Longest audio decoded, in minutes (bounds the memory one upload can take).
    #[arg(long, default_value_t = 60.0)]
    max_audio_min: f64,
    /// Memory for one query's hits, in MB: a query with more is matched in passes over the
    /// references, each within it (same result, slower).
    #[arg(long, value_name = "MB", default_value_t = engine::DEFAULT_IDENTIFY_MEMORY_MB as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
    identify_memory_mb: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cratedigger: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Where the store lives: an LMDB folder or a Redis Cluster.
enum Location {
    Folder(PathBuf),
    Cluster(String),
}

impl Location {
    /// `--store`, else `--db`, else `$CRATEDIGGER_STORE`, else the default folder.
    fn from_args(db: Option<PathBuf>, store: Option<String>) -> anyhow::Result<Self> {
        let store = store.or_else(|| {
            db.is_none()
                .then(|| std::env::var("CRATEDIGGER_STORE").ok())
                .flatten()
                .filter(|url| !url.is_empty())
        });
        match (store, db) {
            (Some(url), _) if index_redis::is_store_url(&url) => Ok(Self::Cluster(url)),
            (Some(url), _) => anyhow::bail!(
                "--store takes a redis://HOST:PORT,... URL, not {url:?} (use --db for a folder)"
            ),
            (None, db) => Ok(Self::Folder(db.unwrap_or_else(index::default_store_dir))),
        }
    }

    /// What to call the store in messages (a cluster URL without passwords).
    fn name(&self) -> PathBuf {
        match self {
            Self::Folder(dir) => dir.clone(),
            Self::Cluster(url) => index_redis::RedisOptions::from_url(url)
                .map(|options| options.display_name())
                .unwrap_or_default()
                .into(),
        }
    }

    /// Opens the store for writing, creating it if needed.
    fn open(&self) -> anyhow::Result<Engine> {
        let engine = match self {
            Self::Folder(db) => {
                std::fs::create_dir_all(db)
                    .with_context(|| format!("creating the store folder {}", db.display()))?;
                Engine::open(db)
            }
            Self::Cluster(url) => Engine::open_with(|params| {
                Ok(Box::new(index_redis::RedisStore::open(url, params)?))
            }),
        };
        engine.with_context(|| format!("opening the store {}", self.name().display()))
    }

    /// Opens a store that must already exist, for writing (tags, scans).
    fn open_writable(&self) -> anyhow::Result<Engine> {
        self.open_if_exists(true)
    }

    /// Opens a store that must already exist, for reading: a query against a missing store
    /// is a mistake worth a clear message, not an empty answer.
    fn open_existing(&self) -> anyhow::Result<Engine> {
        self.open_if_exists(false)
    }

    fn open_if_exists(&self, writable: bool) -> anyhow::Result<Engine> {
        match self {
            Self::Folder(db) => {
                if !db.exists() {
                    anyhow::bail!(
                        "no store at {} (index some references first: cratedigger --db {} index FOLDER)",
                        db.display(),
                        db.display()
                    );
                }
                if writable {
                    Engine::open(db)
                } else {
                    Engine::open_read_only(db)
                }
            }
            // A cluster store has no read-only mode; opening it checks that it exists.
            Self::Cluster(url) => Engine::open_with(|params| {
                Ok(Box::new(index_redis::RedisStore::open_existing(
                    url, params,
                )?))
            }),
        }
        .with_context(|| format!("opening the store {}", self.name().display()))
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let location = Location::from_args(cli.db, cli.store)?;
    match cli.command {
        Command::Index { paths, quiet } => index(&location.open()?, &paths, quiet),
        Command::Identify {
            queries,
            json,
            min_significance,
            identify_memory_mb,
            deep,
        } => {
            let mut engine = location.open_existing()?;
            engine.set_deep(deep);
            engine
                .set_identify_memory_mb(usize::try_from(identify_memory_mb).unwrap_or(usize::MAX));
            if let Some(s) = min_significance {
                let mut p = engine.match_params().clone();
                p.min_significance = s;
                engine.set_match_params(p);
            }
            let mut failed = false;
            for q in &queries {
                let started = Instant::now();
                match engine.identify_file(q) {
                    Ok(found) => {
                        if json {
                            println!("{}", serde_json::to_string(&found)?);
                        } else {
                            output::print_identification(&found, started.elapsed());
                        }
                    }
                    Err(e) => {
                        eprintln!("cratedigger: {e}");
                        failed = true;
                    }
                }
            }
            Ok(exit_code(failed))
        }
        Command::Remove { tracks } => {
            let engine = location.open()?;
            let mut failed = false;
            for t in &tracks {
                match engine.remove(t) {
                    Ok(id) => println!("removed track {id}"),
                    Err(e) => {
                        eprintln!("cratedigger: {e}");
                        failed = true;
                    }
                }
            }
            Ok(exit_code(failed))
        }
        Command::List { json } => {
            let engine = location.open_existing()?;
            let tracks = engine.store().tracks()?;
            output::print_tracks(&tracks, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { json } => {
            let engine = location.open_existing()?;
            let stats = engine.store().stats()?;
            output::print_stats(&location.name(), &stats, engine.store().meta(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact => {
            let Location::Folder(dir) = &location else {
                anyhow::bail!(
                    "compact applies to a store folder (--db); a Redis Cluster store frees \
                     its memory as tracks are removed"
                );
            };
            let (before, after) = Engine::compact_store(dir)
                .with_context(|| format!("compacting the store {}", dir.display()))?;
            println!(
                "compacted {}: {:.1} MB -> {:.1} MB",
                dir.display(),
                before as f64 / 1e6,
                after as f64 / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Find { name, json } => catalogue::find(&location.open_existing()?, &name, json),
        Command::Tag(args) => catalogue::tag(&location.open_writable()?, &args),
        Command::ImportTags { file, format } => {
            catalogue::import_tags(&location.open_writable()?, &file, format)
        }
        Command::Scan {
            quiet,
            json,
            identify_memory_mb,
        } => {
            let mut engine = location.open_writable()?;
            engine
                .set_identify_memory_mb(usize::try_from(identify_memory_mb).unwrap_or(usize::MAX));
            catalogue::scan(&engine, quiet, json)
        }
        Command::Samples(which) => {
            catalogue::relations(&location.open_existing()?, &which, catalogue::Ask::Samples)
        }
        Command::SampledBy(which) => catalogue::relations(
            &location.open_existing()?,
            &which,
            catalogue::Ask::SampledBy,
        ),
        Command::Graph { command } => catalogue::graph(&location.open_existing()?, &command),
        Command::Serve(args) => serve(&location, args),
    }
}

fn serve(location: &Location, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let upload_dir = match (args.upload_dir, location) {
        (Some(dir), _) => dir,
        (None, Location::Folder(db)) => db.join("uploads"),
        (None, Location::Cluster(_)) => anyhow::bail!(
            "a server on a cluster store needs --upload-dir: uploaded references are kept \
             as files on this machine"
        ),
    };
    let mut engine = location.open()?;
    engine.set_identify_memory_mb(usize::try_from(args.identify_memory_mb).unwrap_or(usize::MAX));
    let mut config = server::ServerConfig::new(upload_dir);
    config.bind = args.bind;
    config.token = args.token;
    config.max_upload_bytes = args.max_upload_mb.saturating_mul(1024 * 1024);
    config.max_concurrent_identify = args.max_concurrent_identify;
    config.request_timeout = std::time::Duration::from_secs(args.timeout_s);
    config.max_audio_s = args.max_audio_min * 60.0;
    let writes = if config.token.is_some() {
        "write endpoints need the token"
    } else {
        "read-only: no token, so adding and removing tracks is refused (--token or CRATEDIGGER_TOKEN)"
    };
    server::run(config, engine, |addr| {
        println!("listening on http://{addr} ({writes})");
        // The line above is how scripts learn the port when it was 0.
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })
    .context("serving")?;
    Ok(ExitCode::SUCCESS)
}

fn index(engine: &Engine, paths: &[PathBuf], quiet: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bar = progress_bar(quiet, "files");
    let mut audio_s = 0.0;
    let mut failures = Vec::new();
    let summary = engine.index_paths(paths, &mut |event| match event {
        IndexEvent::Started { n_files } => bar.set_length(n_files as u64),
        IndexEvent::Done { outcome, .. } => {
            if let IndexOutcome::Added { duration_s, .. }
            | IndexOutcome::Replaced { duration_s, .. } = outcome
            {
                audio_s += duration_s;
            }
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "{:.2} h of audio, {:.0}x real time",
                audio_s / 3600.0,
                audio_s / secs
            ));
            bar.inc(1);
        }
        IndexEvent::Failed { path, error } => {
            bar.suspend(|| eprintln!("failed: {}: {error}", path.display()));
            failures.push(path.to_path_buf());
            bar.inc(1);
        }
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "indexed {} new, {} replaced, {} unchanged, {} duplicates, {} failed; {:.2} h of audio in {:.1} s ({:.0}x real time)",
        summary.added,
        summary.replaced,
        summary.unchanged,
        summary.duplicates,
        summary.failed,
        summary.audio_s / 3600.0,
        secs,
        summary.audio_s / secs.max(1e-3)
    );
    let st = &summary.stages;
    if summary.audio_s > 0.0 {
        // Thread-seconds per stage, as x real time per core: what each stage alone costs.
        let x = |s: f64| summary.audio_s / s.max(1e-6);
        println!(
            "stages (thread-seconds): read+hash {:.1} s ({:.0}x), decode {:.1} s ({:.0}x), fingerprint {:.1} s ({:.0}x), store {:.1} s ({:.0}x)",
            st.hash_s,
            x(st.hash_s),
            st.decode_s,
            x(st.decode_s),
            st.fingerprint_s,
            x(st.fingerprint_s),
            st.store_s,
            x(st.store_s)
        );
    }
    Ok(exit_code(summary.failed > 0))
}

/// A progress bar counting `unit` (its length set later), hidden when `quiet`.
pub(crate) fn progress_bar(quiet: bool, unit: &str) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Exit code 1 when some item (a file, a query, a track) failed and the others went on;
/// 2 is kept for errors that stopped the whole command.
pub(crate) fn exit_code(some_failed: bool) -> ExitCode {
    if some_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `identify --deep`'s help names the speeds the engine searches; it is written by
    /// hand, so this keeps it true when `engine::DEEP_SPEEDS` changes.
    #[test]
    fn deep_help_names_the_engines_speeds() {
        let mut cli = super::Cli::command();
        let help = cli
            .find_subcommand_mut("identify")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        let listed = format!(
            "({})",
            engine::DEEP_SPEEDS
                .map(|(speed, _)| speed.to_string())
                .join(", ")
        );
        assert!(
            help.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(&listed),
            "{listed} not in the help:\n{help}"
        );
    }
}
