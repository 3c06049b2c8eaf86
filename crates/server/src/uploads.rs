//! Uploaded audio: read from a request into memory (to identify) or into a file the server
//! names after the content (to index). A client's file name is never used as a path; it is
//! kept only as a display label.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The file, in the upload folder, mapping stored upload names to their labels.
const LABELS_FILE: &str = "labels.json";
/// Longest label kept, in characters.
const MAX_LABEL_CHARS: usize = 120;
/// Name prefix of an upload being received: renamed to its content hash once whole, so a
/// file under an upload name is always complete. One left behind was cut off by a crash.
const INCOMING_PREFIX: &str = ".incoming-";
/// Name prefix of a new `labels.json` being written (renamed over the old one when whole).
const LABELS_TMP_PREFIX: &str = ".labels-";

/// One uploaded song held in memory.
pub struct InMemory {
    /// The client's name for it, cleaned for display.
    pub label: Option<String>,
    /// Its format's file extension, when the name or content type tells.
    pub ext: Option<&'static str>,
    pub bytes: Vec<u8>,
    /// The share of the server's memory budget for bodies that `bytes` takes; given back
    /// when dropped.
    pub budget: Budget,
}

/// Bytes of request bodies held in memory, taken from a semaphore of one permit per byte
/// as they arrive: a client that sends its body slowly holds only what it has sent.
pub struct Budget {
    pool: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub fn new(pool: Arc<Semaphore>) -> Self {
        Self { pool, held: None }
    }

    /// Takes `n` more bytes of the budget, or says the server is full (503).
    fn take(&mut self, n: usize) -> Result<(), ApiError> {
        let full = || ApiError::busy("holds as many songs to identify as its memory allows");
        let n = u32::try_from(n).map_err(|_| full())?;
        let permit = self
            .pool
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| full())?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

/// One uploaded song stored in the upload folder.
pub struct Stored {
    /// The server's name for it: content hash and known extension.
    pub name: String,
    pub path: PathBuf,
    pub label: Option<String>,
}

/// What the client said about one uploaded file.
struct Described {
    label: Option<String>,
    ext: Option<&'static str>,
}

/// The upload folder and the labels of the songs in it.
pub struct Uploads {
    dir: PathBuf,
    labels: Mutex<BTreeMap<String, String>>,
}

impl Uploads {
    /// Creates the folder if needed, removes what a crash left half-written, and reads
    /// the labels.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Canonical, so that a stored track's path can be recognised as an upload.
        let dir = std::fs::canonicalize(dir)?;
        // Only a running server writes these, and this one is not running yet.
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(INCOMING_PREFIX) || name.starts_with(LABELS_TMP_PREFIX) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let labels = match std::fs::read(dir.join(LABELS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{LABELS_FILE} is not a JSON object of strings: {e}"),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            dir,
            labels: Mutex::new(labels),
        })
    }

    /// The upload name of a catalogued path, if the file is one of ours.
    pub fn name_of(&self, path: &str) -> Option<String> {
        let path = Path::new(path);
        (path.parent() == Some(self.dir.as_path()))
            .then(|| path.file_name()?.to_str().map(str::to_string))
            .flatten()
    }

    /// The label a client gave the upload stored under `name`.
    pub fn label(&self, name: &str) -> Option<String> {
        self.lock().get(name).cloned()
    }

    /// Records (or with `None`, forgets) the label of an upload. Blocking.
    pub fn set_label(&self, name: &str, label: Option<&str>) -> std::io::Result<()> {
        let mut labels = self.lock();
        let changed = match label {
            Some(l) => labels.insert(name.to_string(), l.to_string()).as_deref() != Some(l),
            None => labels.remove(name).is_some(),
        };
        if !changed {
            return Ok(());
        }
        // Written whole, then renamed over the old file: a crash keeps one or the other.
        let json = serde_json::to_vec_pretty(&*labels).map_err(std::io::Error::other)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(LABELS_TMP_PREFIX)
            .tempfile_in(&self.dir)?;
        std::io::Write::write_all(&mut tmp, &json)?;
        tmp.persist(self.dir.join(LABELS_FILE))
            .map_err(|e| e.error)?;
        Ok(())
    }

    /// Deletes an upload and its label. Blocking.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.set_label(name, None)
    }

    /// Deletes the uploads (and labels) that no catalogued track points at: files a crash
    /// stored before their indexing job committed them. Blocking; run at startup only,
    /// while no job is under way (one server per upload folder).
    pub fn remove_orphans(&self, is_catalogued: impl Fn(&Path) -> bool) -> std::io::Result<()> {
        let mut orphans = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_upload_name(&name) && !is_catalogued(&self.dir.join(&name)) {
                orphans.push(name);
            }
        }
        let labelled: Vec<String> = self.lock().keys().cloned().collect();
        for name in labelled {
            if !self.dir.join(&name).exists() {
                orphans.push(name);
            }
        }
        for name in orphans {
            self.remove(&name)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Streams every uploaded file of `req` (multipart fields with a file name or named
    /// `file`, else the raw body) into the upload folder, each under its content hash.
    pub async fn receive(&self, req: Request, limit_bytes: u64) -> Result<Vec<Stored>, ApiError> {
        let req = limited(req, limit_bytes)?;
        let mut stored = Vec::new();
        if is_multipart(&req) {
            let mut form = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
            while let Some(mut field) = form
                .next_field()
                .await
                .map_err(|e| multipart_error(&e, limit_bytes))?
            {
                let Some(described) = describe_field(&field) else {
                    continue;
                };
                let mut sink = Sink::new(&self.dir)?;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(&e, limit_bytes))?
                {
                    sink.write(&chunk).await?;
                }
                stored.push(sink.finish(&self.dir, described).await?);
            }
        } else {
            let described = describe_raw(&req);
            let mut body = req.into_body();
            let mut sink = Sink::new(&self.dir)?;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| body_error(&e, limit_bytes))?;
                if let Ok(chunk) = frame.into_data() {
                    sink.write(&chunk).await?;
                }
            }
            if sink.len > 0 {
                stored.push(sink.finish(&self.dir, described).await?);
            }
        }
        Ok(stored)
    }
}

/// True for names the server gives uploads: 64 hex digits of BLAKE3, then maybe an
/// extension.
fn is_upload_name(name: &str) -> bool {
    let hash = name.split_once('.').map_or(name, |(hash, _)| hash);
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the first uploaded file of `req` (as [`Uploads::receive`] finds it) into memory,
/// taking each chunk from `budget` as it arrives.
pub async fn receive_in_memory(
    req: Request,
    limit_bytes: u64,
    mut budget: Budget,
) -> Result<InMemory, ApiError> {
    let none = || {
        ApiError::bad_request(
            "no audio in the request: send the song as the raw body, or as the multipart \
             field `file`",
        )
    };
    let req = limited(req, limit_bytes)?;
    if is_multipart(&req) {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| multipart_error(&e, limit_bytes))?
        {
            let Some(described) = describe_field(&field) else {
                continue;
            };
            let mut bytes = Vec::new();
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| multipart_error(&e, limit_bytes))?
            {
                budget.take(chunk.len())?;
                bytes.extend_from_slice(&chunk);
            }
            if bytes.is_empty() {
                return Err(none());
            }
            return Ok(InMemory {
                label: described.label,
                ext: described.ext,
                bytes,
                budget,
            });
        }
        Err(none())
    } else {
        let described = describe_raw(&req);
        let mut body = req.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| body_error(&e, limit_bytes))?;
            if let Ok(chunk) = frame.into_data() {
                budget.take(chunk.len())?;
                bytes.extend_from_slice(&chunk);
            }
        }
        if bytes.is_empty() {
            return Err(none());
        }
        Ok(InMemory {
            label: described.label,
            ext: described.ext,
            bytes,
            budget,
        })
    }
}

/// An upload being written to a temporary file in the upload folder, hashed as it comes.
struct Sink {
    tmp: tempfile::NamedTempFile,
    file: tokio::fs::File,
    hasher: blake3::Hasher,
    len: u64,
}

impl Sink {
    fn new(dir: &Path) -> Result<Self, ApiError> {
        let io = |e: std::io::Error| ApiError::internal(format!("storing the upload: {e}"));
        let tmp = tempfile::Builder::new()
            .prefix(INCOMING_PREFIX)
            .tempfile_in(dir)
            .map_err(io)?;
        let file = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        Ok(Self {
            tmp,
            file,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))
    }

    /// Moves the finished upload to its name: the hex BLAKE3 of its bytes (the engine's
    /// content hash too) and the extension of its format, if known.
    async fn finish(mut self, dir: &Path, described: Described) -> Result<Stored, ApiError> {
        let io = |e: std::io::Error| ApiError::internal(format!("storing the upload: {e}"));
        if self.len == 0 {
            return Err(ApiError::bad_request("an uploaded file is empty"));
        }
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        drop(self.file);
        let hash = self.hasher.finalize().to_hex();
        let name = match described.ext {
            Some(ext) => format!("{hash}.{ext}"),
            None => hash.to_string(),
        };
        let path = dir.join(&name);
        let tmp = self.tmp;
        let target = path.clone();
        tokio::task::spawn_blocking(move || tmp.persist(target).map_err(|e| e.error))
            .await?
            .map_err(io)?;
        Ok(Stored {
            name,
            path,
            label: described.label,
        })
    }
}

/// Multipart framing allowed on top of the upload limit (the headers of a few parts).
pub const MULTIPART_SLACK_BYTES: u64 = 64 * 1024;

/// Refuses a request whose declared length is over the limit before reading any of it,
/// and makes its body fail once it grows past the limit (for bodies sent without a
/// length); both become 413.
fn limited(req: Request, limit_bytes: u64) -> Result<Request, ApiError> {
    let limit = limit_bytes.saturating_add(if is_multipart(&req) {
        MULTIPART_SLACK_BYTES
    } else {
        0
    });
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        linger(req.into_body(), n);
        return Err(ApiError::too_large(limit_bytes));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit))))
}

/// Most of a refused body read and thrown away so that its client sees the 413.
pub const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest a refused body is read for.
pub const LINGER_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards a refused body, up to [`LINGER_MAX_BYTES`] and [`LINGER_MAX_TIME`],
/// while the 413 goes out. A server that closes a connection with unread bytes in its
/// receive buffer resets it, and a client still sending its body then often loses the
/// answer along with the connection; reading on (as web servers' lingering close does)
/// lets it finish sending and read why it was refused. Nothing is kept; a client that
/// declared more than the bound is cut off when the bound is reached.
fn linger(mut body: axum::body::Body, declared: u64) {
    if declared > LINGER_MAX_BYTES {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_MAX_TIME, drain).await;
    });
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// A multipart field that holds a file (it has a file name or is named `file`), or None.
fn describe_field(field: &axum::extract::multipart::Field<'_>) -> Option<Described> {
    if field.file_name().is_none() && field.name() != Some("file") {
        return None;
    }
    let label = field.file_name().and_then(clean_label);
    let ext = label
        .as_deref()
        .and_then(ext_of_name)
        .or_else(|| field.content_type().and_then(ext_of_content_type));
    Some(Described { label, ext })
}

/// A raw body: its label from the `name` query parameter, its format from that name or
/// the content type.
fn describe_raw(req: &Request) -> Described {
    // The same decoding as axum's Query extractor, without a typed struct for one key.
    let label = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.into_iter().find(|(k, _)| k == "name").map(|(_, v)| v))
        .as_deref()
        .and_then(clean_label);
    let ext = label.as_deref().and_then(ext_of_name).or_else(|| {
        req.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(ext_of_content_type)
    });
    Described { label, ext }
}

/// A client's file name made fit for display: its last path component, without control
/// characters, at most [`MAX_LABEL_CHARS`] long. Never used as a path.
pub fn clean_label(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then(|| cleaned.to_string())
}

/// The extension of a name if it is one the engine decodes, as the engine spells it.
fn ext_of_name(name: &str) -> Option<&'static str> {
    let (_, ext) = name.rsplit_once('.')?;
    engine::SUPPORTED_EXTENSIONS
        .iter()
        .copied()
        .find(|e| e.eq_ignore_ascii_case(ext))
}

/// The usual extension of an audio content type.
fn ext_of_content_type(content_type: &str) -> Option<&'static str> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(match essence.as_str() {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/ogg" | "audio/vorbis" | "application/ogg" => "ogg",
        "audio/opus" => "opus",
        "audio/wav" | "audio/wave" | "audio/x-wav" | "audio/vnd.wave" => "wav",
        "audio/aiff" | "audio/x-aiff" => "aiff",
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" => "m4a",
        "audio/aac" => "aac",
        "audio/webm" => "webm",
        _ => return None,
    })
}

/// True if the error, or one it wraps, is a body over the size limit.
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn body_error(e: &axum::Error, limit_bytes: u64) -> ApiError {
    if over_limit(e) || e.source().is_some_and(over_limit) {
        ApiError::too_large(limit_bytes)
    } else {
        ApiError::bad_request(format!("reading the upload: {e}"))
    }
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, limit_bytes: u64) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE || over_limit(e) {
        ApiError::too_large(limit_bytes)
    } else {
        ApiError::bad_request(e.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_only_the_last_component_and_no_control_characters() {
        assert_eq!(clean_label("../../x.ogg").as_deref(), Some("x.ogg"));
        assert_eq!(
            clean_label("C:\\music\\a b.mp3").as_deref(),
            Some("a b.mp3")
        );
        assert_eq!(clean_label("a\u{0}b\nc.wav").as_deref(), Some("abc.wav"));
        assert_eq!(clean_label("../.."), None);
        assert_eq!(clean_label("dir/"), None);
        assert_eq!(clean_label(&"x".repeat(500)).map(|l| l.len()), Some(120));
    }

    #[test]
    fn extensions_come_from_a_fixed_list() {
        assert_eq!(ext_of_name("Song.MP3"), Some("mp3"));
        assert_eq!(ext_of_name("x.sh"), None);
        assert_eq!(ext_of_name("noext"), None);
        assert_eq!(ext_of_content_type("audio/mpeg; charset=x"), Some("mp3"));
        assert_eq!(ext_of_content_type("text/html"), None);
    }
}
