//! Human-readable and JSON renderings of the CLI's answers.

use std::path::Path;
use std::time::Duration;

use engine::{Identification, MatchReport};
use index::{StoreMeta, StoreStats, TrackId, TrackInfo};

/// Formats seconds as m:ss.s (rounded to the tenth first, so 179.97 s is 3:00.0).
pub fn clock(s: f64) -> String {
    let tenths = if s.is_finite() {
        (s.max(0.0) * 10.0).round() as u64
    } else {
        0
    };
    format!("{}:{:02}.{}", tenths / 600, tenths % 600 / 10, tenths % 10)
}

fn reference_name(m: &MatchReport) -> String {
    match (&m.artist, &m.title) {
        (Some(a), Some(t)) => format!("{a} - {t}"),
        (None, Some(t)) => t.clone(),
        _ => Path::new(&m.path)
            .file_name()
            .map_or_else(|| m.path.clone(), |n| n.to_string_lossy().into_owned()),
    }
}

fn transform(m: &MatchReport) -> String {
    match m.speed {
        Some(s) => format!("speed x{s:.3} ({:+.2} st)", m.pitch_semitones),
        None if m.kind == engine::MatchKind::Exact => "unchanged".to_string(),
        None => format!("tempo x{:.3}, pitch {:+.2} st", m.tempo, m.pitch_semitones),
    }
}

pub fn print_identification(found: &Identification, took: Duration) {
    let n = found.matches.len();
    println!(
        "{} ({}): {} ({:.2} s)",
        found.query,
        clock(found.duration_s),
        match n {
            0 => "no sample found".to_string(),
            1 => "1 sample found".to_string(),
            _ => format!("{n} samples found"),
        },
        took.as_secs_f64()
    );
    if n == 0 {
        return;
    }
    println!(
        "  {:>3}  {:<36}  {:<15}  {:<15}  {:<30}  {:>5}  {:>6}",
        "#", "reference", "in query", "in reference", "transform", "times", "score"
    );
    for (i, m) in found.matches.iter().enumerate() {
        let mut name = reference_name(m);
        if name.chars().count() > 36 {
            name = name.chars().take(35).collect::<String>() + "~";
        }
        println!(
            "  {:>3}  {:<36}  {:<15}  {:<15}  {:<30}  {:>5}  {:>6.4}",
            i + 1,
            name,
            format!("{}-{}", clock(m.query_start_s), clock(m.query_end_s)),
            format!("{}-{}", clock(m.ref_start_s), clock(m.ref_end_s)),
            transform(m),
            m.loop_count,
            m.score
        );
        if m.occurrences.len() > 1 {
            let list: Vec<String> = m
                .occurrences
                .iter()
                .map(|o| format!("{}-{}", clock(o.query_start_s), clock(o.query_end_s)))
                .collect();
            println!("       occurrences in query: {}", list.join(", "));
        }
        println!("       {}", m.path);
    }
}

pub fn print_tracks(tracks: &[(TrackId, TrackInfo)], json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<serde_json::Value> = tracks
            .iter()
            .map(|(id, t)| {
                let mut v = serde_json::to_value(t)?;
                v["id"] = serde_json::json!(id);
                Ok(v)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (id, t) in tracks {
        let name = match (&t.artist, &t.title) {
            (Some(a), Some(ti)) => format!("{a} - {ti}"),
            (None, Some(ti)) => ti.clone(),
            _ => String::new(),
        };
        println!(
            "{id:>6}  {:>8}  {name:<40}  {}",
            clock(t.duration_s),
            t.path
        );
    }
    println!("{} tracks", tracks.len());
    Ok(())
}

pub fn print_stats(
    db: &Path,
    stats: &StoreStats,
    meta: &StoreMeta,
    json: bool,
) -> anyhow::Result<()> {
    let hours = stats.total_duration_s / 3600.0;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "store": db.display().to_string(),
                "format_version": meta.format_version,
                "fingerprint": meta.fingerprint_params,
                "tracks": stats.n_tracks,
                "postings": stats.n_postings,
                "keys": stats.n_keys,
                "audio_hours": hours,
                "bytes_on_disk": stats.bytes_on_disk,
            })
        );
        return Ok(());
    }
    println!("store:        {}", db.display());
    println!(
        "format:       v{} ({})",
        meta.format_version, meta.fingerprint_params
    );
    println!("tracks:       {}", stats.n_tracks);
    println!("audio:        {hours:.2} h");
    println!(
        "postings:     {} in {} keys",
        stats.n_postings, stats.n_keys
    );
    println!(
        "size on disk: {:.1} MB ({:.2} MB per hour of audio)",
        stats.bytes_on_disk as f64 / 1e6,
        if hours > 0.0 {
            stats.bytes_on_disk as f64 / 1e6 / hours
        } else {
            0.0
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::clock;

    #[test]
    fn clock_rounds_before_splitting_minutes() {
        assert_eq!(clock(0.0), "0:00.0");
        assert_eq!(clock(5.04), "0:05.0");
        assert_eq!(clock(59.96), "1:00.0");
        assert_eq!(clock(179.97), "3:00.0");
        assert_eq!(clock(61.24), "1:01.2");
        assert_eq!(clock(754.3), "12:34.3");
        assert_eq!(clock(-3.0), "0:00.0");
        assert_eq!(clock(f64::NAN), "0:00.0");
    }
}
