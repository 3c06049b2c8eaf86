//! The catalogue and sample-graph commands: find, tag, import-tags, scan, samples,
//! sampled-by and graph export. The engine answers; this file only parses and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use engine::graph::{ExportFormat, sentence};
use engine::{
    Candidate, Edge, Engine, MetadataEdit, Resolved, ScanEvent, TrackRelations, parse_metadata_csv,
    parse_metadata_json,
};
use index::TrackId;

use crate::exit_code;

/// Which track a question is about.
#[derive(Args)]
pub struct WhichTrack {
    /// A title, artist, file name (fuzzy), a track id or the path a track was indexed from.
    #[arg(required_unless_present = "id")]
    name: Option<String>,
    /// The track id, when a name matches several tracks.
    #[arg(long, conflicts_with = "name")]
    id: Option<TrackId>,
    /// Print JSON instead of sentences.
    #[arg(long)]
    json: bool,
}

/// `tag` arguments.
#[derive(Args)]
pub struct TagArgs {
    /// The track: its id or the path it was indexed from.
    track: String,
    #[arg(long)]
    title: Option<String>,
    #[arg(long)]
    artist: Option<String>,
    #[arg(long)]
    album: Option<String>,
    /// Release year (1000-2999); decides who sampled whom.
    #[arg(long)]
    year: Option<String>,
    #[arg(long)]
    musicbrainz_recording_id: Option<String>,
    #[arg(long)]
    musicbrainz_release_id: Option<String>,
}

/// Formats of a metadata table.
#[derive(Clone, Copy, ValueEnum)]
pub enum TableFormat {
    Csv,
    Json,
}

/// `graph` subcommands.
#[derive(Subcommand)]
pub enum GraphCommand {
    /// Write every track and relation as JSON, CSV (one row per relation), GraphML or DOT.
    Export {
        #[arg(long, value_enum, default_value = "json")]
        format: GraphFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Formats of a graph export.
#[derive(Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Json,
    Csv,
    Graphml,
    Dot,
}

/// Which side of a track's relations to show.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Samples,
    SampledBy,
}

fn describe(c: &Candidate) -> String {
    let name = match (&c.track.artist, &c.track.title) {
        (Some(a), Some(t)) => format!("{a} - {t}"),
        (None, Some(t)) => t.clone(),
        _ => String::from("(untitled)"),
    };
    let year = c.track.year.map_or_else(String::new, |y| format!(" ({y})"));
    format!(
        "{:>6}  {:.2}  {name}{year}  {}",
        c.id, c.score, c.track.path
    )
}

pub fn find(engine: &Engine, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let found = engine.find_tracks(name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for c in &found {
            println!("{}", describe(c));
        }
        println!("{} tracks match {name:?}", found.len());
    }
    Ok(exit_code(found.is_empty()))
}

/// The track a question names: by `--id`, or by a name that must pick one track.
fn resolve(engine: &Engine, which: &WhichTrack) -> anyhow::Result<TrackId> {
    if let Some(id) = which.id {
        if engine.store().track(id)?.is_none() {
            anyhow::bail!("no track {id} in the store");
        }
        return Ok(id);
    }
    let name = which.name.as_deref().unwrap_or_default();
    match engine.resolve_track(name)? {
        Resolved::One(c) => Ok(c.id),
        Resolved::NotFound => {
            anyhow::bail!("no track matches {name:?} (see `cratedigger list` or `find`)")
        }
        Resolved::Ambiguous(list) => {
            let lines: Vec<String> = list.iter().map(describe).collect();
            anyhow::bail!(
                "{name:?} matches {} tracks equally well; pick one with --id:\n{}",
                list.len(),
                lines.join("\n")
            )
        }
    }
}

/// A text flag of `tag`: absent keeps, empty clears, anything else sets.
fn text_edit(v: &Option<String>) -> Option<Option<String>> {
    v.as_ref().map(|s| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    })
}

pub fn tag(engine: &Engine, args: &TagArgs) -> anyhow::Result<ExitCode> {
    let year = match args.year.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(y) => Some(Some(
            y.parse::<i32>()
                .with_context(|| format!("--year {y:?} is not a year"))?,
        )),
    };
    let edit = MetadataEdit {
        title: text_edit(&args.title),
        artist: text_edit(&args.artist),
        album: text_edit(&args.album),
        year,
        musicbrainz_recording_id: text_edit(&args.musicbrainz_recording_id),
        musicbrainz_release_id: text_edit(&args.musicbrainz_release_id),
    };
    if edit.is_empty() {
        anyhow::bail!(
            "nothing to change: give --title, --artist, --album, --year or a MusicBrainz id"
        );
    }
    let store = engine.store();
    let id = match args.track.parse::<TrackId>() {
        Ok(id) if store.track(id)?.is_some() => Some(id),
        _ => store.find_by_path(&engine::path_key(Path::new(&args.track)))?,
    };
    let Some(id) = id else {
        anyhow::bail!(
            "no track {} in the store (give an id or an indexed path)",
            args.track
        );
    };
    let info = engine.edit_metadata(id, &edit)?;
    println!(
        "track {id}: title {:?}, artist {:?}, album {:?}, year {}",
        info.title.unwrap_or_default(),
        info.artist.unwrap_or_default(),
        info.album.unwrap_or_default(),
        info.year
            .map_or_else(|| "unknown".to_string(), |y| y.to_string())
    );
    Ok(ExitCode::SUCCESS)
}

pub fn import_tags(
    engine: &Engine,
    file: &Path,
    format: Option<TableFormat>,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let is_json = match format {
        Some(f) => matches!(f, TableFormat::Json),
        None => file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json")),
    };
    let rows = if is_json {
        parse_metadata_json(&text)
    } else {
        parse_metadata_csv(&text)
    }
    .with_context(|| format!("reading {}", file.display()))?;
    let base = std::fs::canonicalize(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let summary = engine.import_metadata(&rows, base.as_deref())?;
    println!(
        "updated {} tracks; {} rows matched no track",
        summary.updated.len(),
        summary.unmatched.len()
    );
    for (row, named) in &summary.unmatched {
        eprintln!("row {row}: no track {named}");
    }
    Ok(exit_code(!summary.unmatched.is_empty()))
}

pub fn scan(engine: &Engine, quiet: bool, json: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bar = crate::progress_bar(quiet, "tracks");
    let mut found = 0;
    let summary = engine.scan(&mut |event| match event {
        ScanEvent::Started { n_tracks, .. } => bar.set_length(n_tracks as u64),
        ScanEvent::Done { found: n, .. } => {
            found += n;
            bar.set_message(format!("{found} relations"));
            bar.inc(1);
        }
        ScanEvent::Failed { error, .. } => {
            // The error names the file already.
            bar.suspend(|| eprintln!("failed: {error}"));
            bar.inc(1);
        }
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if json {
        let mut v = serde_json::to_value(&summary)?;
        v["elapsed_s"] = serde_json::json!(secs);
        println!("{v}");
    } else {
        println!(
            "scanned {} of {} tracks: {} pairs examined, {} samples, {} duplicates, {} failed ({:.1} s)",
            summary.tracks_scanned,
            summary.n_tracks,
            summary.pairs_examined,
            summary.samples_found,
            summary.duplicates_found,
            summary.failed,
            secs
        );
    }
    Ok(exit_code(summary.failed > 0))
}

/// An edge as JSON, with the other track and the sentence.
fn edge_json(r: &TrackRelations, e: &Edge) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(e)?;
    v["other"] = serde_json::to_value(r.node(e.other(r.track.id)))?;
    v["sentence"] = serde_json::json!(sentence(e, |id| r.node(id)));
    Ok(v)
}

pub fn relations(engine: &Engine, which: &WhichTrack, ask: Ask) -> anyhow::Result<ExitCode> {
    let id = resolve(engine, which)?;
    let r = engine.relations_of(id)?;
    let (key, directed) = match ask {
        Ask::Samples => ("samples", &r.samples),
        Ask::SampledBy => ("sampled_by", &r.sampled_by),
    };
    let unscanned = unscanned_hint(engine, id)?;
    if which.json {
        let list = |edges: &[Edge]| -> anyhow::Result<Vec<serde_json::Value>> {
            edges.iter().map(|e| edge_json(&r, e)).collect()
        };
        let v = serde_json::json!({
            "track": r.track,
            key: list(directed)?,
            "shares_material": list(&r.shares_material)?,
            "duplicates": list(&r.duplicates)?,
            "scanned": unscanned.is_none(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if directed.is_empty() {
            let what = match ask {
                Ask::Samples => "no sample of an earlier track found",
                Ask::SampledBy => "no later track found sampling it",
            };
            println!("{}: {what}.", r.track.full_name());
        }
        for e in directed
            .iter()
            .chain(&r.shares_material)
            .chain(&r.duplicates)
        {
            println!("{}", sentence(e, |id| r.node(id)));
        }
    }
    if let Some(hint) = unscanned {
        eprintln!("{hint}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A warning when the track has not been compared with every other track yet.
fn unscanned_hint(engine: &Engine, id: TrackId) -> anyhow::Result<Option<String>> {
    let store = engine.store();
    let tracks = store.tracks()?;
    let max = tracks.last().map_or(0, |(id, _)| *id);
    let behind = tracks.len() > 1 && store.scan_mark(id)?.is_none_or(|m| m < max);
    Ok(behind.then(|| {
        "note: the library has tracks this one was not compared with yet; run `cratedigger scan`"
            .to_string()
    }))
}

pub fn graph(engine: &Engine, command: &GraphCommand) -> anyhow::Result<ExitCode> {
    let GraphCommand::Export { format, output } = command;
    let format = match format {
        GraphFormat::Json => ExportFormat::Json,
        GraphFormat::Csv => ExportFormat::Csv,
        GraphFormat::Graphml => ExportFormat::GraphMl,
        GraphFormat::Dot => ExportFormat::Dot,
    };
    let text = engine::graph::export(&engine.graph()?, format)?;
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
