//! Extraction of the few descriptive tags we keep (title, artist, album, year, MusicBrainz ids).

use symphonia::core::meta::well_known::METADATA_ID_ID3V1;
use symphonia::core::meta::{MetadataRevision, RawValue, StandardTag, Tag};

/// Descriptive tags read from the file, all optional.
#[derive(Default, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tags {
    /// Track title.
    pub title: Option<String>,
    /// Track artist.
    pub artist: Option<String>,
    /// Album (release) title.
    pub album: Option<String>,
    /// Year of recording or release, from the first 4-digit year in a date tag.
    pub year: Option<i32>,
    /// MusicBrainz recording MBID.
    pub musicbrainz_recording_id: Option<String>,
    /// MusicBrainz release (album) MBID.
    pub musicbrainz_release_id: Option<String>,
}

/// Tag values longer than this are ignored: real titles are short, and we store tags in the
/// index, so a hostile file must not be able to bloat it.
const MAX_TAG_CHARS: usize = 1024;

/// The owner string MusicBrainz Picard writes into ID3v2 `UFID` frames holding the recording id.
const MUSICBRAINZ_UFID_OWNER: &str = "http://musicbrainz.org";

/// How trustworthy a year source is; a lower rank wins.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum YearRank {
    Recording = 0,
    Release = 1,
    Original = 2,
}

/// Same idea for the recording id: a dedicated tag beats the Picard "track id" convention.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RecordingIdRank {
    Recording = 0,
    Track = 1,
    Ufid = 2,
}

/// Accumulates tags from several metadata revisions, first good value wins.
#[derive(Default)]
struct Slots {
    tags: Tags,
    year_rank: Option<YearRank>,
    recording_rank: Option<RecordingIdRank>,
}

impl Slots {
    fn apply(&mut self, tag: &Tag) {
        let Some(std) = &tag.std else {
            self.apply_raw(tag);
            return;
        };
        match std {
            StandardTag::TrackTitle(v) => fill_text(&mut self.tags.title, v),
            StandardTag::Artist(v) => fill_text(&mut self.tags.artist, v),
            StandardTag::Album(v) => fill_text(&mut self.tags.album, v),
            StandardTag::RecordingDate(v) | StandardTag::RecordingTime(v) => {
                self.offer_year(parse_year(v), YearRank::Recording)
            }
            StandardTag::RecordingYear(y) => {
                self.offer_year(valid_year(i32::from(*y)), YearRank::Recording)
            }
            StandardTag::ReleaseDate(v) | StandardTag::ReleaseTime(v) => {
                self.offer_year(parse_year(v), YearRank::Release)
            }
            StandardTag::ReleaseYear(y) => {
                self.offer_year(valid_year(i32::from(*y)), YearRank::Release)
            }
            StandardTag::OriginalReleaseDate(v) | StandardTag::OriginalRecordingDate(v) => {
                self.offer_year(parse_year(v), YearRank::Original)
            }
            StandardTag::OriginalReleaseYear(y) | StandardTag::OriginalRecordingYear(y) => {
                self.offer_year(valid_year(i32::from(*y)), YearRank::Original)
            }
            StandardTag::MusicBrainzRecordingId(v) => {
                self.offer_recording_id(v, RecordingIdRank::Recording)
            }
            // Picard stores the *recording* MBID under "MusicBrainz Track Id" in Vorbis
            // comments, APE and MP4; the release-track MBID has its own dedicated key.
            StandardTag::MusicBrainzTrackId(v) => {
                self.offer_recording_id(v, RecordingIdRank::Track)
            }
            StandardTag::MusicBrainzAlbumId(v) if self.tags.musicbrainz_release_id.is_none() => {
                self.tags.musicbrainz_release_id = first_mbid(v);
            }
            _ => {}
        }
    }

    /// Handles the raw tags symphonia does not map to a standard tag but we still want.
    fn apply_raw(&mut self, tag: &Tag) {
        // ID3v2 keeps the recording MBID in a UFID frame owned by musicbrainz.org.
        if tag.raw.key != "UFID" {
            return;
        }
        let owner_is_mb =
            tag.raw.sub_fields.iter().flatten().any(
                |f| matches!(&f.value, RawValue::String(s) if s.trim() == MUSICBRAINZ_UFID_OWNER),
            );
        if !owner_is_mb {
            return;
        }
        let text = match &tag.raw.value {
            RawValue::Binary(b) => String::from_utf8_lossy(b).into_owned(),
            RawValue::String(s) => s.to_string(),
            _ => return,
        };
        self.offer_recording_id(&text, RecordingIdRank::Ufid);
    }

    fn offer_year(&mut self, year: Option<i32>, rank: YearRank) {
        if year.is_some() && self.year_rank.is_none_or(|have| rank < have) {
            self.tags.year = year;
            self.year_rank = Some(rank);
        }
    }

    fn offer_recording_id(&mut self, value: &str, rank: RecordingIdRank) {
        if self.recording_rank.is_some_and(|have| have <= rank) {
            return;
        }
        if let Some(id) = first_mbid(value) {
            self.tags.musicbrainz_recording_id = Some(id);
            self.recording_rank = Some(rank);
        }
    }
}

/// Collects tags from metadata revisions in the order symphonia reports them.
///
/// ID3v1 is kept apart and only fills gaps at the end: it is read first (it sits at the end of
/// the file and symphonia probes trailing tags first) but truncates values to 30 bytes.
#[derive(Default)]
pub(crate) struct TagCollector {
    main: Slots,
    id3v1: Slots,
}

impl TagCollector {
    pub(crate) fn add_revision(&mut self, rev: &MetadataRevision) {
        let slots = if rev.info.metadata == METADATA_ID_ID3V1 {
            &mut self.id3v1
        } else {
            &mut self.main
        };
        for tag in &rev.media.tags {
            slots.apply(tag);
        }
        for track in &rev.per_track {
            for tag in &track.metadata.tags {
                slots.apply(tag);
            }
        }
    }

    pub(crate) fn finish(self) -> Tags {
        let (mut t, f) = (self.main.tags, self.id3v1.tags);
        t.title = t.title.or(f.title);
        t.artist = t.artist.or(f.artist);
        t.album = t.album.or(f.album);
        t.year = t.year.or(f.year);
        t.musicbrainz_recording_id = t.musicbrainz_recording_id.or(f.musicbrainz_recording_id);
        t.musicbrainz_release_id = t.musicbrainz_release_id.or(f.musicbrainz_release_id);
        t
    }
}

fn fill_text(slot: &mut Option<String>, value: &str) {
    if slot.is_some() {
        return;
    }
    // Tag writers pad with NULs and spaces; an all-blank tag is as good as none.
    let trimmed = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if !trimmed.is_empty() && trimmed.chars().count() <= MAX_TAG_CHARS {
        *slot = Some(trimmed.to_owned());
    }
}

/// Returns the first plausible year (1000-2999) found as 4 consecutive digits in `text`.
pub(crate) fn parse_year(text: &str) -> Option<i32> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        // Only a run of at least 4 digits can hold a year; shorter runs are days or months.
        if i - start >= 4 {
            let year = bytes[start..start + 4]
                .iter()
                .fold(0i32, |acc, &d| acc * 10 + i32::from(d - b'0'));
            return valid_year(year);
        }
    }
    None
}

fn valid_year(year: i32) -> Option<i32> {
    (1000..=2999).contains(&year).then_some(year)
}

/// Returns the first MBID-shaped token (8-4-4-4-12 hex digits) in `text`, lower-cased.
///
/// Multi-valued tags are joined with separators like "; " or "/", and some writers add
/// prefixes, so we search rather than require the whole value to match.
pub(crate) fn first_mbid(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|token| is_mbid(token))
        .map(str::to_ascii_lowercase)
}

fn is_mbid(token: &str) -> bool {
    let groups: Vec<&str> = token.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_are_found_in_common_date_shapes() {
        assert_eq!(parse_year("1973"), Some(1973));
        assert_eq!(parse_year("1973-05-01"), Some(1973));
        assert_eq!(parse_year("05/01/1973"), Some(1973));
        assert_eq!(parse_year("2003-01-01T00:00:00Z"), Some(2003));
        assert_eq!(parse_year("20230101"), Some(2023));
        assert_eq!(parse_year("12/05"), None);
        assert_eq!(parse_year("0000"), None);
        assert_eq!(parse_year(""), None);
    }

    #[test]
    fn mbids_are_extracted_and_validated() {
        let id = "8f3471b5-7e6a-48da-86a9-c1c07a0f47ae";
        assert_eq!(first_mbid(id).as_deref(), Some(id));
        assert_eq!(
            first_mbid(&format!(
                "{}; 00000000-0000-0000-0000-000000000000",
                id.to_uppercase()
            ))
            .as_deref(),
            Some(id)
        );
        assert_eq!(first_mbid("not-an-id"), None);
        assert_eq!(first_mbid("8f3471b5-7e6a-48da-86a9-c1c07a0f47a"), None);
    }

    #[test]
    fn recording_tag_beats_track_tag_beats_ufid() {
        let a = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";
        let b = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
        let mut s = Slots::default();
        s.offer_recording_id(a, RecordingIdRank::Ufid);
        s.offer_recording_id(b, RecordingIdRank::Track);
        assert_eq!(s.tags.musicbrainz_recording_id.as_deref(), Some(b));
        s.offer_recording_id(a, RecordingIdRank::Track);
        assert_eq!(s.tags.musicbrainz_recording_id.as_deref(), Some(b));
        s.offer_recording_id(a, RecordingIdRank::Recording);
        assert_eq!(s.tags.musicbrainz_recording_id.as_deref(), Some(a));
    }
}
