//! Using cratedigger as a library: index a folder of references, then list what a song
//! samples.
//!
//! `cargo run --release -p engine --example identify -- STORE_DIR REFERENCE_FOLDER QUERY`

use std::path::PathBuf;

use engine::{Engine, IndexEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, references, query] = args.as_slice() else {
        eprintln!("usage: identify STORE_DIR REFERENCE_FOLDER QUERY");
        std::process::exit(2);
    };
    std::fs::create_dir_all(store)?;
    let engine = Engine::open(store.as_ref())?;
    let summary = engine.index_paths(&[PathBuf::from(references)], &mut |event| {
        if let IndexEvent::Failed { path, error } = event {
            eprintln!("skipped {}: {error}", path.display());
        }
    })?;
    println!(
        "{} new references ({:.1} min of audio), {} unchanged",
        summary.added,
        summary.audio_s / 60.0,
        summary.unchanged
    );
    let found = engine.identify_file(query.as_ref())?;
    if found.matches.is_empty() {
        println!("{query}: no sample found");
    }
    for m in &found.matches {
        println!(
            "{query} {:.1}-{:.1} s uses {} {:.1}-{:.1} s: tempo x{:.3}, pitch {:+.2} st, {} time(s), score {:.3}",
            m.query_start_s,
            m.query_end_s,
            m.path,
            m.ref_start_s,
            m.ref_end_s,
            m.tempo,
            m.pitch_semitones,
            m.loop_count,
            m.score
        );
    }
    Ok(())
}
