//! The catalogue side of the engine: finding tracks by a loosely typed name, editing their
//! descriptive metadata, and importing metadata for untagged libraries from CSV or JSON.

use std::path::Path;

use index::{TrackId, TrackInfo};
use serde::Serialize;

use crate::{Engine, EngineError, path_key};

/// Candidates scoring below this are not a match at all. Chosen so that a one-letter typo
/// in a word of five letters or more still matches (Jaro-Winkler about 0.95, times the
/// token weight 0.9), while unrelated words sharing a prefix ("expo" / "explosion", 0.78)
/// do not.
pub const MIN_FIND_SCORE: f64 = 0.8;

/// Two candidates whose scores differ by less than this are equally good answers to a
/// name, so [`Engine::resolve_track`] does not pick between them.
const TIE_SCORE: f64 = 0.02;

/// Weight of a name that contains the query as a run of whole words, at full coverage.
const SUBSTRING_WEIGHT: f64 = 0.95;
/// Weight of word-by-word fuzzy agreement (every query word found, possibly misspelt).
const TOKEN_WEIGHT: f64 = 0.9;
/// Weight of whole-string fuzzy agreement.
const WHOLE_WEIGHT: f64 = 0.88;

/// One track that answers a name, with how well.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub id: TrackId,
    /// Similarity in 0-1; 1 is an exact (normalised) title, artist or file name.
    pub score: f64,
    pub track: TrackInfo,
}

/// What a name refers to.
#[derive(Clone, Debug)]
pub enum Resolved {
    /// Exactly one best track.
    One(Candidate),
    /// Several tracks match equally well; the caller must choose (by id).
    Ambiguous(Vec<Candidate>),
    /// Nothing matches.
    NotFound,
}

/// A change to a track's descriptive metadata: `None` keeps a field, `Some(None)` clears
/// it, `Some(Some(v))` sets it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataEdit {
    pub title: Option<Option<String>>,
    pub artist: Option<Option<String>>,
    pub album: Option<Option<String>>,
    pub year: Option<Option<i32>>,
    pub musicbrainz_recording_id: Option<Option<String>>,
    pub musicbrainz_release_id: Option<Option<String>>,
}

impl MetadataEdit {
    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn apply(&self, info: &mut TrackInfo) {
        fn set<T: Clone>(slot: &mut Option<T>, edit: &Option<Option<T>>) {
            if let Some(v) = edit {
                slot.clone_from(v);
            }
        }
        set(&mut info.title, &self.title);
        set(&mut info.artist, &self.artist);
        set(&mut info.album, &self.album);
        set(&mut info.year, &self.year);
        set(
            &mut info.musicbrainz_recording_id,
            &self.musicbrainz_recording_id,
        );
        set(
            &mut info.musicbrainz_release_id,
            &self.musicbrainz_release_id,
        );
    }
}

/// One row of an imported metadata file: which track (by path or content hash) and the
/// values to set. Empty values leave the stored ones alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataRow {
    /// 1-based row number in the file (the header is row 0 in CSV), for messages.
    pub row: usize,
    pub path: Option<String>,
    /// Hex blake3 of the file's bytes, as `list --json` shows it.
    pub content_hash: Option<String>,
    pub edit: MetadataEdit,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportSummary {
    /// (row, track) for every row applied.
    pub updated: Vec<(usize, TrackId)>,
    /// (row, what the row named) for every row that matches no catalogued track.
    pub unmatched: Vec<(usize, String)>,
}

impl Engine {
    /// Every track whose title, artist, album, artist and title together, or file name
    /// resembles `name`, best first (ties by id). Matching ignores case, diacritics and
    /// punctuation, accepts the name as a run of words inside a longer one, and tolerates
    /// misspellings; see [`similarity`].
    pub fn find_tracks(&self, name: &str) -> Result<Vec<Candidate>, EngineError> {
        let query = normalise(name);
        if query.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: Vec<Candidate> = self
            .store()
            .tracks()?
            .into_iter()
            .filter_map(|(id, track)| {
                let score = track_score(&query, &track);
                (score >= MIN_FIND_SCORE).then_some(Candidate { id, score, track })
            })
            .collect();
        found.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(found)
    }

    /// The one track `name` refers to: a track id, the path a track was indexed from, or a
    /// name for [`Self::find_tracks`], whose best candidate must beat the next one clearly.
    pub fn resolve_track(&self, name: &str) -> Result<Resolved, EngineError> {
        let store = self.store();
        let by_id = name.trim().parse::<TrackId>().ok();
        if let Some(id) = by_id
            && let Some(track) = store.track(id)?
        {
            return Ok(Resolved::One(Candidate {
                id,
                score: 1.0,
                track,
            }));
        }
        if let Some(id) = store.find_by_path(&path_key(Path::new(name)))?
            && let Some(track) = store.track(id)?
        {
            return Ok(Resolved::One(Candidate {
                id,
                score: 1.0,
                track,
            }));
        }
        let mut found = self.find_tracks(name)?;
        let Some(best) = found.first().map(|c| c.score) else {
            return Ok(Resolved::NotFound);
        };
        let tied = found
            .iter()
            .take_while(|c| best - c.score < TIE_SCORE)
            .count();
        if tied == 1 {
            Ok(Resolved::One(found.swap_remove(0)))
        } else {
            found.truncate(tied);
            Ok(Resolved::Ambiguous(found))
        }
    }

    /// Applies `edit` to track `id`'s metadata and returns the track as now stored.
    pub fn edit_metadata(
        &self,
        id: TrackId,
        edit: &MetadataEdit,
    ) -> Result<TrackInfo, EngineError> {
        let no_track = || EngineError::NoSuchTrack(id.to_string());
        let mut info = self.store().track(id)?.ok_or_else(no_track)?;
        edit.apply(&mut info);
        validate(&info)?;
        if !self.store().update_metadata(id, &info)? {
            return Err(no_track());
        }
        Ok(info)
    }

    /// Applies imported rows: each names a track by path (relative paths are tried under
    /// `base_dir` first, then as given) or by content hash. Rows that match no track are
    /// listed in the summary, the others applied one transaction each.
    pub fn import_metadata(
        &self,
        rows: &[MetadataRow],
        base_dir: Option<&Path>,
    ) -> Result<ImportSummary, EngineError> {
        let mut summary = ImportSummary::default();
        for row in rows {
            match self.row_track(row, base_dir)? {
                Some(id) => {
                    self.edit_metadata(id, &row.edit)?;
                    summary.updated.push((row.row, id));
                }
                None => {
                    let named = row
                        .path
                        .clone()
                        .or_else(|| row.content_hash.clone())
                        .unwrap_or_else(|| "(no path or content_hash)".to_string());
                    summary.unmatched.push((row.row, named));
                }
            }
        }
        Ok(summary)
    }

    fn row_track(
        &self,
        row: &MetadataRow,
        base_dir: Option<&Path>,
    ) -> Result<Option<TrackId>, EngineError> {
        let store = self.store();
        if let Some(p) = row.path.as_deref() {
            let p = Path::new(p);
            if p.is_relative()
                && let Some(base) = base_dir
                && let Some(id) = store.find_by_path(&path_key(&base.join(p)))?
            {
                return Ok(Some(id));
            }
            if let Some(id) = store.find_by_path(&path_key(p))? {
                return Ok(Some(id));
            }
        }
        if let Some(h) = row.content_hash.as_deref() {
            return Ok(store.find_by_content(&h.trim().to_ascii_lowercase())?);
        }
        Ok(None)
    }
}

/// Rejects values the store should not keep (the same bounds the tag reader applies).
fn validate(info: &TrackInfo) -> Result<(), EngineError> {
    for (what, v) in [
        ("title", &info.title),
        ("artist", &info.artist),
        ("album", &info.album),
        ("MusicBrainz recording id", &info.musicbrainz_recording_id),
        ("MusicBrainz release id", &info.musicbrainz_release_id),
    ] {
        if v.as_ref()
            .is_some_and(|s| s.chars().count() > MAX_VALUE_CHARS)
        {
            return Err(EngineError::BadMetadata(format!(
                "the {what} is longer than {MAX_VALUE_CHARS} characters"
            )));
        }
    }
    if let Some(y) = info.year
        && !(1000..=2999).contains(&y)
    {
        return Err(EngineError::BadMetadata(format!(
            "year {y} is not a year (1000-2999)"
        )));
    }
    Ok(())
}

/// Longest metadata value accepted, as for tags read from files (crates/audio).
const MAX_VALUE_CHARS: usize = 1024;

/// The best similarity of `query` (already normalised) to any of the track's names.
fn track_score(query: &str, t: &TrackInfo) -> f64 {
    let stem = Path::new(&t.path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    let both = match (&t.artist, &t.title) {
        (Some(a), Some(ti)) => Some(format!("{a} {ti}")),
        _ => None,
    };
    [&t.title, &t.artist, &t.album, &both, &stem]
        .into_iter()
        .flatten()
        .map(|name| similarity(query, &normalise(name)))
        .fold(0.0, f64::max)
}

/// Similarity in 0-1 of two normalised names: 1 when equal; [`SUBSTRING_WEIGHT`] scaled by
/// coverage when `name` contains `query` as whole words; otherwise the better of the mean
/// best Jaro-Winkler of each query word against the name's words, and Jaro-Winkler of the
/// whole strings, each weighted below a substring match.
pub fn similarity(query: &str, name: &str) -> f64 {
    if query.is_empty() || name.is_empty() {
        return 0.0;
    }
    if query == name {
        return 1.0;
    }
    let padded = format!(" {name} ");
    let mut best: f64 = 0.0;
    if padded.contains(&format!(" {query} ")) {
        let coverage = query.len() as f64 / name.len() as f64;
        best = SUBSTRING_WEIGHT * (0.85 + 0.15 * coverage);
    }
    let name_words: Vec<&str> = name.split(' ').collect();
    let query_words: Vec<&str> = query.split(' ').collect();
    let per_word: f64 = query_words
        .iter()
        .map(|q| {
            name_words
                .iter()
                .map(|n| strsim::jaro_winkler(q, n))
                .fold(0.0, f64::max)
        })
        .sum::<f64>()
        / query_words.len() as f64;
    best = best.max(TOKEN_WEIGHT * per_word);
    best.max(WHOLE_WEIGHT * strsim::jaro_winkler(query, name))
}

/// Lower case, Latin diacritics folded to their base letters, punctuation to spaces, runs
/// of spaces to one: "Beyoncé - Déjà Vu!" becomes "beyonce deja vu".
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = true;
    for c in text.chars().flat_map(char::to_lowercase) {
        let folded = fold_diacritic(c);
        if folded.is_empty() {
            if c.is_alphanumeric() {
                out.push(c);
                space = false;
            } else if !space {
                out.push(' ');
                space = true;
            }
        } else {
            out.push_str(folded);
            space = false;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// The base letters of a lower-case Latin letter with a diacritic (Latin-1 Supplement and
/// Latin Extended-A, which cover the languages of most tagged music), or "" for any other
/// character. Written out instead of Unicode decomposition to avoid a dependency for this.
fn fold_diacritic(c: char) -> &'static str {
    const TABLE: &[(&str, &str)] = &[
        ("àáâãäåāăą", "a"),
        ("çćĉċč", "c"),
        ("ďđ", "d"),
        ("èéêëēĕėęě", "e"),
        ("ĝğġģ", "g"),
        ("ĥħ", "h"),
        ("ìíîïĩīĭįı", "i"),
        ("ĵ", "j"),
        ("ķ", "k"),
        ("ĺļľŀł", "l"),
        ("ñńņňŉ", "n"),
        ("òóôõöøōŏő", "o"),
        ("ŕŗř", "r"),
        ("śŝşš", "s"),
        ("ţťŧ", "t"),
        ("ùúûüũūŭůűų", "u"),
        ("ŵ", "w"),
        ("ýÿŷ", "y"),
        ("źżž", "z"),
        ("ß", "ss"),
        ("æ", "ae"),
        ("œ", "oe"),
        ("þ", "th"),
        ("ð", "d"),
    ];
    if c.is_ascii() {
        return "";
    }
    TABLE
        .iter()
        .find(|(from, _)| from.contains(c))
        .map_or("", |(_, to)| to)
}

/// The columns (CSV header names or JSON keys) an import understands, lower case.
const COLUMNS: &[&str] = &[
    "path",
    "content_hash",
    "title",
    "artist",
    "album",
    "year",
    "musicbrainz_recording_id",
    "musicbrainz_release_id",
];

/// Parses a metadata CSV file: a header row naming some of `path`, `content_hash`, `title`,
/// `artist`, `album`, `year`, `musicbrainz_recording_id`, `musicbrainz_release_id` (any
/// case, any order), then one row per track. Fields follow RFC 4180: commas, quotes and
/// line breaks inside double quotes, `""` for a quote. Unknown columns are an error (a
/// misspelt header would otherwise drop a column silently).
pub fn parse_metadata_csv(text: &str) -> Result<Vec<MetadataRow>, EngineError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = csv_records(text)?.into_iter();
    let Some((_, header)) = records.next() else {
        return Ok(Vec::new());
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    for h in &header {
        check_column(h, 1)?;
    }
    let mut rows = Vec::new();
    for (n, (line, record)) in records.enumerate() {
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if record.len() != header.len() {
            return Err(EngineError::BadMetadata(format!(
                "CSV line {line}: {} fields, the header has {}",
                record.len(),
                header.len()
            )));
        }
        let mut row = MetadataRow {
            row: n + 1,
            ..MetadataRow::default()
        };
        for (column, value) in header.iter().zip(&record) {
            set_field(&mut row, column, value, line)?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Parses a metadata JSON file: an array of objects with the keys of
/// [`parse_metadata_csv`]'s columns; values are strings, numbers (for `year`) or null.
pub fn parse_metadata_json(text: &str) -> Result<Vec<MetadataRow>, EngineError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| EngineError::BadMetadata(format!("invalid JSON: {e}")))?;
    let Some(items) = value.as_array() else {
        return Err(EngineError::BadMetadata(
            "the JSON must be an array of objects, one per track".to_string(),
        ));
    };
    let mut rows = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let Some(object) = item.as_object() else {
            return Err(EngineError::BadMetadata(format!(
                "JSON item {n} is not an object"
            )));
        };
        let mut row = MetadataRow {
            row: n,
            ..MetadataRow::default()
        };
        for (key, v) in object {
            let key = key.to_lowercase();
            check_column(&key, n)?;
            let text = match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(x) => x.to_string(),
                _ => {
                    return Err(EngineError::BadMetadata(format!(
                        "JSON item {n}: `{key}` must be a string or a number"
                    )));
                }
            };
            set_field(&mut row, &key, &text, n)?;
        }
        rows.push(row);
    }
    Ok(rows)
}

fn check_column(name: &str, line: usize) -> Result<(), EngineError> {
    if COLUMNS.contains(&name) {
        Ok(())
    } else {
        Err(EngineError::BadMetadata(format!(
            "line {line}: unknown column `{name}` (known: {})",
            COLUMNS.join(", ")
        )))
    }
}

/// Stores one non-empty field of an imported row.
fn set_field(
    row: &mut MetadataRow,
    column: &str,
    value: &str,
    line: usize,
) -> Result<(), EngineError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(());
    }
    let text = Some(Some(value.to_string()));
    match column {
        "path" => row.path = Some(value.to_string()),
        "content_hash" => row.content_hash = Some(value.to_string()),
        "title" => row.edit.title = text,
        "artist" => row.edit.artist = text,
        "album" => row.edit.album = text,
        "musicbrainz_recording_id" => row.edit.musicbrainz_recording_id = text,
        "musicbrainz_release_id" => row.edit.musicbrainz_release_id = text,
        "year" => {
            let year = value
                .parse::<i32>()
                .ok()
                .filter(|y| (1000..=2999).contains(y));
            let Some(year) = year else {
                return Err(EngineError::BadMetadata(format!(
                    "line {line}: year `{value}` is not a year (1000-2999)"
                )));
            };
            row.edit.year = Some(Some(year));
        }
        _ => check_column(column, line)?,
    }
    Ok(())
}

/// Splits CSV text into records of fields, each with the line number it starts on.
pub(crate) fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>, EngineError> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut start_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push((start_line, std::mem::take(&mut record)));
                line += 1;
                start_line = line;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(EngineError::BadMetadata(format!(
            "CSV line {start_line}: a quoted field is not closed"
        )));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push((start_line, record));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_folds_case_diacritics_and_punctuation() {
        assert_eq!(normalise("Beyoncé - Déjà Vu!"), "beyonce deja vu");
        assert_eq!(normalise("  MØTLEY   Crüe "), "motley crue");
        assert_eq!(normalise("Straße"), "strasse");
        assert_eq!(normalise("Expo '83"), "expo 83");
        assert_eq!(normalise("..."), "");
    }

    #[test]
    fn similarity_ranks_exact_then_words_then_typos() {
        let exact = similarity("runaway", "runaway");
        let inside = similarity("runaway", "runaway remix");
        let typo = similarity("runawy", "runaway");
        let other = similarity("expo", "explosion");
        assert_eq!(exact, 1.0);
        assert!(inside < exact && inside >= MIN_FIND_SCORE, "{inside}");
        assert!(typo < inside && typo >= MIN_FIND_SCORE, "{typo}");
        assert!(other < MIN_FIND_SCORE, "{other}");
        // Word order does not matter; a word inside another word is not a substring match.
        assert!(similarity("west kanye", "kanye west") >= MIN_FIND_SCORE);
        assert!(similarity("way", "runaway") < MIN_FIND_SCORE);
    }

    #[test]
    fn csv_fields_follow_rfc_4180() {
        let text = "\u{feff}Path,Title,year\r\n\"a, b.mp3\",\"He said \"\"hi\"\"\",1973\n\
                    c.mp3,\"two\nlines\",\n\n";
        let rows = parse_metadata_csv(text).expect("parses");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].path.as_deref(), Some("a, b.mp3"));
        assert_eq!(rows[0].edit.title, Some(Some("He said \"hi\"".to_string())));
        assert_eq!(rows[0].edit.year, Some(Some(1973)));
        assert_eq!(rows[1].edit.title, Some(Some("two\nlines".to_string())));
        assert_eq!(
            rows[1].edit.year, None,
            "an empty cell keeps the stored value"
        );
        assert_eq!(rows[1].row, 2);
    }

    #[test]
    fn bad_metadata_files_are_rejected_with_the_line() {
        let unknown = parse_metadata_csv("path,titel\na.mp3,x\n");
        assert!(
            matches!(&unknown, Err(EngineError::BadMetadata(m)) if m.contains("titel")),
            "{unknown:?}"
        );
        let year = parse_metadata_csv("path,year\na.mp3,soon\n");
        assert!(
            matches!(&year, Err(EngineError::BadMetadata(m)) if m.contains("line 2")),
            "{year:?}"
        );
        let short = parse_metadata_csv("path,year\na.mp3\n");
        assert!(matches!(short, Err(EngineError::BadMetadata(_))));
        let open = parse_metadata_csv("path\n\"a.mp3\n");
        assert!(matches!(open, Err(EngineError::BadMetadata(_))));
        assert!(matches!(
            parse_metadata_json("{\"path\": \"a\"}"),
            Err(EngineError::BadMetadata(_))
        ));
    }

    #[test]
    fn json_rows_take_strings_numbers_and_nulls() {
        let rows = parse_metadata_json(
            r#"[{"content_hash": "ABC", "year": 1999, "artist": null, "Title": "T"}]"#,
        )
        .expect("parses");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].content_hash.as_deref(), Some("ABC"));
        assert_eq!(rows[0].edit.year, Some(Some(1999)));
        assert_eq!(rows[0].edit.artist, None);
        assert_eq!(rows[0].edit.title, Some(Some("T".to_string())));
    }
}
