//! The routes and their handlers. The router is built from one table ([`routes`] lists
//! it), so a test can hold the OpenAPI document to every route served.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use engine::{Engine, Identification, IndexEvent, IndexOutcome};
use index::{TrackId, TrackInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tower_http::services::ServeFile;
use tower_http::timeout::TimeoutLayer;

use crate::ServerConfig;
use crate::auth::WriteAccess;
use crate::error::ApiError;
use crate::jobs::{Job, JobState, Jobs};
use crate::uploads::{self, Stored, Uploads};
use crate::waveform::{Waveform, envelope};
use crate::{catalogue, web};

/// Slices in the query's waveform returned by identify: about a screen's width.
const QUERY_WAVEFORM_BUCKETS: usize = 1200;
/// Slices of a track's waveform unless the client asks otherwise.
const DEFAULT_WAVEFORM_BUCKETS: usize = 1200;
/// Track waveforms kept in memory (each a few tens of KB).
const MAX_CACHED_WAVEFORMS: usize = 64;
/// Unfinished jobs at most; more is 503, so uploads cannot queue without bound.
const MAX_UNFINISHED_JOBS: usize = 16;
/// Tracks per page of a listing unless the client asks otherwise, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// What every handler shares.
pub struct AppState {
    pub config: ServerConfig,
    engine: Arc<Engine>,
    uploads: Arc<Uploads>,
    pub(crate) jobs: Arc<Jobs>,
    /// One permit per request decoding audio (identify, waveforms).
    decode_slots: Arc<Semaphore>,
    /// One permit per byte of identify bodies held in memory (see `body_budget_bytes`).
    body_budget: Arc<Semaphore>,
    /// Held by the job under way (indexing, scanning): jobs write one after another.
    pub(crate) writer: tokio::sync::Mutex<()>,
    waveforms: Mutex<HashMap<(TrackId, usize), Arc<Waveform>>>,
}

pub(crate) type Shared = Arc<AppState>;

impl AppState {
    pub fn new(config: ServerConfig, engine: Arc<Engine>, uploads: Uploads) -> Shared {
        Arc::new(Self {
            decode_slots: Arc::new(Semaphore::new(config.max_concurrent_identify)),
            body_budget: Arc::new(Semaphore::new(body_budget_bytes(&config))),
            config,
            engine,
            uploads: Arc::new(uploads),
            jobs: Arc::new(Jobs::default()),
            writer: tokio::sync::Mutex::new(()),
            waveforms: Mutex::new(HashMap::new()),
        })
    }

    fn body_limit(&self) -> u64 {
        self.config.max_upload_bytes
    }

    /// 503 when too many jobs are unfinished, so work cannot queue without bound.
    pub(crate) fn room_for_a_job(&self) -> Result<(), ApiError> {
        if self.jobs.n_unfinished() >= MAX_UNFINISHED_JOBS {
            return Err(ApiError {
                retry_after_s: Some(crate::error::RETRY_AFTER_S),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{MAX_UNFINISHED_JOBS} jobs are already waiting; retry later"),
                )
            });
        }
        Ok(())
    }

    /// 202 with the job and its URL.
    pub(crate) fn job_accepted(&self, id: u64) -> Response {
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/api/jobs/{id}"))],
            Json(self.jobs.get(id)),
        )
            .into_response()
    }

    /// Takes a decode slot, or answers 503 at once when all are taken.
    fn decode_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.decode_slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy(&format!(
                "decodes {} song(s), its limit (--max-concurrent-identify)",
                self.config.max_concurrent_identify
            ))
        })
    }

    /// Runs blocking engine work on tokio's blocking threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || work(&engine)).await?
    }
}

/// Bytes of identify bodies held in memory at once: as many full-size uploads as songs
/// decoded at once, so memory is bounded as when every decoding request held a whole
/// upload. Taken as bytes arrive, so slow clients hold only what they sent, never a
/// decode slot.
fn body_budget_bytes(config: &ServerConfig) -> usize {
    let bytes = config
        .max_upload_bytes
        .saturating_add(uploads::MULTIPART_SLACK_BYTES)
        .saturating_mul(config.max_concurrent_identify as u64);
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// One route: its method and path (OpenAPI path syntax, as axum takes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
}

/// Every route the server serves.
pub fn routes() -> Vec<RouteSpec> {
    table()
        .into_iter()
        .map(|(method, path, _)| RouteSpec { method, path })
        .collect()
}

/// The routing table.
fn table() -> Vec<(Method, &'static str, MethodRouter<Shared>)> {
    // Upload routes read their bodies under the server's own limit (uploads::limited),
    // which answers 413 in the API's JSON; axum's default 2 MB cap is lifted there only.
    let upload = |router: MethodRouter<Shared>| -> MethodRouter<Shared> {
        router.layer::<_, Infallible>(DefaultBodyLimit::disable())
    };
    vec![
        (Method::GET, "/", get(web::index)),
        (Method::GET, "/app.js", get(web::script)),
        (Method::GET, "/style.css", get(web::style)),
        (Method::GET, "/api/openapi.json", get(openapi)),
        (Method::GET, "/api/status", get(status)),
        (Method::POST, "/api/identify", upload(post(identify))),
        (Method::GET, "/api/tracks", get(list_tracks)),
        (Method::POST, "/api/tracks", upload(post(add_tracks))),
        (Method::GET, "/api/tracks/{id}", get(track)),
        (Method::DELETE, "/api/tracks/{id}", delete(remove_track)),
        (Method::GET, "/api/tracks/{id}/audio", get(track_audio)),
        (
            Method::GET,
            "/api/tracks/{id}/waveform",
            get(track_waveform),
        ),
        (
            Method::GET,
            "/api/tracks/{id}/relations",
            get(catalogue::track_relations),
        ),
        (
            Method::GET,
            "/api/tracks/{id}/samples",
            get(catalogue::track_samples),
        ),
        (
            Method::GET,
            "/api/tracks/{id}/sampled-by",
            get(catalogue::track_sampled_by),
        ),
        (Method::GET, "/api/graph", get(catalogue::graph)),
        (Method::POST, "/api/scan", post(catalogue::start_scan)),
        (Method::GET, "/api/jobs", get(list_jobs)),
        (Method::GET, "/api/jobs/{id}", get(job)),
    ]
}

/// The application: the table's routes, a JSON 404 for the rest, and the timeout.
pub fn router(state: Shared) -> Router {
    let mut router = Router::new();
    for (_, path, method_router) in table() {
        // Routes sharing a path with different methods merge into one.
        router = router.route(path, method_router);
    }
    let timeout = state.config.request_timeout;
    router
        .fallback(not_found)
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {} (the API is described at /api/openapi.json)",
        uri.path()
    ))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
        .into_response()
}

/// The server's limits and load, and the store's size.
#[derive(Serialize)]
struct Status {
    version: &'static str,
    n_tracks: u64,
    total_duration_s: f64,
    writes_enabled: bool,
    max_upload_bytes: u64,
    identify: Slots,
    unfinished_jobs: usize,
}

#[derive(Serialize)]
struct Slots {
    /// Requests decoding audio now.
    in_flight: usize,
    limit: usize,
    /// Bytes of identify uploads held in memory now (received, or waiting to decode).
    buffered_bytes: usize,
}

async fn status(State(s): State<Shared>) -> Result<Json<Status>, ApiError> {
    let stats = s.blocking(|e| Ok(e.store().stats()?)).await?;
    let limit = s.config.max_concurrent_identify;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        n_tracks: stats.n_tracks,
        total_duration_s: stats.total_duration_s,
        writes_enabled: s.config.token.is_some(),
        max_upload_bytes: s.config.max_upload_bytes,
        identify: Slots {
            in_flight: limit - s.decode_slots.available_permits(),
            limit,
            buffered_bytes: body_budget_bytes(&s.config) - s.body_budget.available_permits(),
        },
        unfinished_jobs: s.jobs.n_unfinished(),
    }))
}

/// The answer of identify: the engine's report and a picture of the query.
#[derive(Serialize)]
struct IdentifyResponse {
    #[serde(flatten)]
    identification: Identification,
    waveform: Waveform,
}

async fn identify(
    State(s): State<Shared>,
    req: Request,
) -> Result<Json<IdentifyResponse>, ApiError> {
    // The body is read first, under the memory budget, and the decode slot taken only
    // once it is whole: a client sending slowly holds no slot (nor a thread) meanwhile.
    let budget = uploads::Budget::new(s.body_budget.clone());
    let upload = uploads::receive_in_memory(req, s.body_limit(), budget).await?;
    let slot = s.decode_slot()?;
    let label = upload.label.unwrap_or_else(|| "upload".to_string());
    let held = upload.budget;
    let answer = s
        .blocking(move |engine| {
            let _slot = slot;
            // The bytes stay counted until decoded and dropped.
            let _held = held;
            let (identification, samples) = engine
                .identify_bytes(&label, upload.bytes, upload.ext)
                .map_err(|e| ApiError::from_engine(&e))?;
            let waveform = envelope(&samples, engine.sample_rate_hz(), QUERY_WAVEFORM_BUCKETS);
            Ok(IdentifyResponse {
                identification,
                waveform,
            })
        })
        .await?;
    Ok(Json(answer))
}

/// A catalogued track as the API shows it.
#[derive(Serialize)]
struct TrackView {
    id: TrackId,
    /// What to call it: its title, else the name it was uploaded under, else its file name.
    label: String,
    title: Option<String>,
    artist: Option<String>,
    album: Option<String>,
    year: Option<i32>,
    duration_s: f64,
    /// Where the server read it from.
    path: String,
    /// The client's file name when it was added through the API (and so stored in the
    /// server's upload folder under a name the server chose), else null.
    uploaded_as: Option<String>,
    indexed_unix_s: u64,
    /// How well the track answers a search (0-1), when it was found by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    match_score: Option<f64>,
}

impl TrackView {
    fn new(id: TrackId, info: TrackInfo, uploads: &Uploads) -> Self {
        let uploaded_as = uploads
            .name_of(&info.path)
            .map(|name| uploads.label(&name).unwrap_or(name));
        let label = info
            .title
            .clone()
            .or_else(|| uploaded_as.clone())
            .unwrap_or_else(|| {
                std::path::Path::new(&info.path)
                    .file_name()
                    .map_or_else(|| info.path.clone(), |n| n.to_string_lossy().into_owned())
            });
        Self {
            id,
            label,
            title: info.title,
            artist: info.artist,
            album: info.album,
            year: info.year,
            duration_s: info.duration_s,
            path: info.path,
            uploaded_as,
            indexed_unix_s: info.indexed_unix_s,
            match_score: None,
        }
    }
}

#[derive(Deserialize)]
struct ListParams {
    /// A name to search for (fuzzy: case, accents and typos forgiven); none lists all.
    q: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct TrackList {
    /// Tracks matching the query, over all pages.
    total: usize,
    offset: usize,
    tracks: Vec<TrackView>,
}

async fn list_tracks(
    State(s): State<Shared>,
    Query(params): Query<ListParams>,
) -> Result<Json<TrackList>, ApiError> {
    let uploads = s.uploads.clone();
    let list = s
        .blocking(move |engine| {
            let q = params.q.as_deref().unwrap_or("").trim();
            // A search answers best first; a listing is in id order.
            let matching: Vec<TrackView> = if q.is_empty() {
                engine
                    .store()
                    .tracks()?
                    .into_iter()
                    .map(|(id, info)| TrackView::new(id, info, &uploads))
                    .collect()
            } else {
                engine
                    .find_tracks(q)
                    .map_err(|e| ApiError::from_engine(&e))?
                    .into_iter()
                    .map(|c| TrackView {
                        match_score: Some(c.score),
                        ..TrackView::new(c.id, c.track, &uploads)
                    })
                    .collect()
            };
            let offset = params.offset.unwrap_or(0);
            let limit = params.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
            Ok(TrackList {
                total: matching.len(),
                offset,
                tracks: matching.into_iter().skip(offset).take(limit).collect(),
            })
        })
        .await?;
    Ok(Json(list))
}

/// A track id from the path; anything but a number is 400 (and never reaches a file).
pub(crate) fn track_id(raw: &str) -> Result<TrackId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a track id (a number)")))
}

/// The catalogue entry of a track, or 404.
async fn track_info(s: &AppState, id: TrackId) -> Result<TrackInfo, ApiError> {
    s.blocking(move |engine| {
        engine
            .store()
            .track(id)?
            .ok_or_else(|| ApiError::not_found(format!("no track {id} in the store")))
    })
    .await
}

async fn track(
    State(s): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Json<TrackView>, ApiError> {
    let id = track_id(&raw)?;
    let info = track_info(&s, id).await?;
    Ok(Json(TrackView::new(id, info, &s.uploads)))
}

/// The track's audio file, read from the path the catalogue holds for this id (with
/// range requests, so players can seek).
async fn track_audio(
    State(s): State<Shared>,
    Path(raw): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = track_id(&raw)?;
    let info = track_info(&s, id).await?;
    let path = PathBuf::from(&info.path);
    if !path.is_file() {
        return Err(ApiError::not_found(format!(
            "the audio of track {id} is no longer where it was indexed from"
        )));
    }
    let res = ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::internal(format!("reading the audio of track {id}: {e}")))?;
    Ok(res.map(Body::new))
}

#[derive(Deserialize)]
struct WaveformParams {
    buckets: Option<usize>,
}

async fn track_waveform(
    State(s): State<Shared>,
    Path(raw): Path<String>,
    Query(params): Query<WaveformParams>,
) -> Result<Response, ApiError> {
    let id = track_id(&raw)?;
    let buckets = params
        .buckets
        .unwrap_or(DEFAULT_WAVEFORM_BUCKETS)
        .clamp(1, crate::waveform::MAX_BUCKETS);
    if let Some(w) = cached_waveform(&s, id, buckets) {
        return Ok(Json(&*w).into_response());
    }
    let slot = s.decode_slot()?;
    let waveform = s
        .blocking(move |engine| {
            let _slot = slot;
            let samples = engine
                .decode_track(id)
                .map_err(|e| ApiError::from_engine(&e))?;
            Ok(Arc::new(envelope(
                &samples,
                engine.sample_rate_hz(),
                buckets,
            )))
        })
        .await?;
    let mut cache = lock(&s.waveforms);
    if cache.len() >= MAX_CACHED_WAVEFORMS {
        cache.clear();
    }
    cache.insert((id, buckets), waveform.clone());
    Ok(Json(&*waveform).into_response())
}

fn cached_waveform(s: &AppState, id: TrackId, buckets: usize) -> Option<Arc<Waveform>> {
    lock(&s.waveforms).get(&(id, buckets)).cloned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cache holds whole entries only; a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stores the uploaded songs and starts a job indexing them; 202 with the job.
async fn add_tracks(
    State(s): State<Shared>,
    _write: WriteAccess,
    req: Request,
) -> Result<Response, ApiError> {
    s.room_for_a_job()?;
    let stored = s.uploads.receive(req, s.body_limit()).await?;
    if stored.is_empty() {
        return Err(ApiError::bad_request(
            "no audio in the request: send the song as the raw body, or as one or more \
             multipart fields `file`",
        ));
    }
    let id = s.jobs.create("index", stored.len());
    tokio::spawn(index_job(s.clone(), id, stored));
    Ok(s.job_accepted(id))
}

/// What indexing did with one uploaded file.
#[derive(Serialize)]
struct IndexedFile {
    /// The client's name for the file.
    label: Option<String>,
    /// `added`, `unchanged`, `replaced`, `duplicate` or `failed`.
    outcome: &'static str,
    /// The track that holds this audio now.
    track_id: Option<TrackId>,
    error: Option<String>,
}

async fn index_job(s: Shared, job: u64, stored: Vec<Stored>) {
    // One indexing job at a time: the store takes one writer anyway, and this keeps the
    // order of jobs the order of requests.
    let _writer = s.writer.lock().await;
    s.jobs.update(job, |j| j.state = JobState::Running);
    let jobs = s.jobs.clone();
    let uploads = s.uploads.clone();
    let outcome = s
        .blocking(move |engine| Ok(index_uploads(engine, &jobs, &uploads, job, stored)))
        .await;
    s.jobs.update(job, |j| match outcome {
        Ok(Ok(files)) => {
            j.state = JobState::Done;
            j.result = serde_json::to_value(files).ok();
        }
        Ok(Err(e)) | Err(ApiError { message: e, .. }) => {
            j.state = JobState::Failed;
            j.error = Some(e);
        }
    });
    // Cached waveforms of replaced or removed ids are harmless: ids are never reused.
}

/// Indexes stored uploads (blocking), reporting progress to the job. Uploads that end up
/// unused (undecodable, or duplicates of audio stored elsewhere) are deleted.
fn index_uploads(
    engine: &Engine,
    jobs: &Jobs,
    uploads: &Uploads,
    job: u64,
    stored: Vec<Stored>,
) -> Result<Vec<IndexedFile>, String> {
    for s in &stored {
        // The same bytes uploaded again keep the name they were first uploaded under.
        if uploads.label(&s.name).is_none() {
            uploads
                .set_label(&s.name, s.label.as_deref())
                .map_err(|e| format!("recording the upload's label: {e}"))?;
        }
    }
    let paths: Vec<PathBuf> = stored.iter().map(|s| s.path.clone()).collect();
    let mut results: HashMap<PathBuf, IndexedFile> = HashMap::new();
    let summary = engine.index_paths(&paths, &mut |event| {
        let (path, file) = match event {
            IndexEvent::Started { .. } => return,
            IndexEvent::Done { path, outcome } => {
                let (name, id) = match outcome {
                    IndexOutcome::Added { id, .. } => ("added", *id),
                    IndexOutcome::Unchanged { id } => ("unchanged", *id),
                    IndexOutcome::Replaced { id, .. } => ("replaced", *id),
                    IndexOutcome::Duplicate { of } => ("duplicate", *of),
                };
                (
                    path,
                    IndexedFile {
                        label: None,
                        outcome: name,
                        track_id: Some(id),
                        error: None,
                    },
                )
            }
            IndexEvent::Failed { path, error } => (
                path,
                IndexedFile {
                    label: None,
                    outcome: "failed",
                    track_id: None,
                    // The engine names the file by its server path; the client knows it
                    // by its label, given beside.
                    error: Some(error.to_string()),
                },
            ),
        };
        results.insert(path.to_path_buf(), file);
        jobs.update(job, |j| j.done += 1);
    });
    if let Err(e) = summary {
        return Err(e.to_string());
    }
    let mut files = Vec::with_capacity(stored.len());
    for s in stored {
        let mut file = results.remove(&s.path).unwrap_or(IndexedFile {
            label: None,
            outcome: "failed",
            track_id: None,
            error: Some("the indexer did not report on this file".to_string()),
        });
        if matches!(file.outcome, "failed" | "duplicate") {
            // Nothing in the catalogue points at this file.
            let _ = uploads.remove(&s.name);
        } else if let (Some(id), Some(label)) = (file.track_id, &s.label) {
            title_from_label(engine, id, label);
        }
        file.label = s.label;
        files.push(file);
    }
    Ok(files)
}

/// Gives an uploaded track without a title tag its upload name (less the extension) as
/// title, so that it can be found by name like any other.
fn title_from_label(engine: &Engine, id: TrackId, label: &str) {
    let Ok(Some(info)) = engine.store().track(id) else {
        return;
    };
    if info.title.is_some() {
        return;
    }
    let title = label
        .rsplit_once('.')
        .map_or(label, |(stem, _)| stem)
        .trim()
        .to_string();
    if title.is_empty() {
        return;
    }
    let edit = engine::MetadataEdit {
        title: Some(Some(title)),
        ..Default::default()
    };
    // A failed edit leaves the track found by its upload name only; not worth failing
    // the upload for.
    let _ = engine.edit_metadata(id, &edit);
}

#[derive(Serialize)]
struct Removed {
    removed: TrackId,
}

async fn remove_track(
    State(s): State<Shared>,
    _write: WriteAccess,
    Path(raw): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    let id = track_id(&raw)?;
    let uploads = s.uploads.clone();
    s.blocking(move |engine| {
        let info = engine
            .store()
            .track(id)?
            .ok_or_else(|| ApiError::not_found(format!("no track {id} in the store")))?;
        if !engine.store().remove_track(id)? {
            return Err(ApiError::not_found(format!("no track {id} in the store")));
        }
        if let Some(name) = uploads.name_of(&info.path) {
            uploads.remove(&name).map_err(|e| {
                ApiError::internal(format!("track {id} removed, but not its upload: {e}"))
            })?;
        }
        Ok(())
    })
    .await?;
    Ok(Json(Removed { removed: id }))
}

async fn list_jobs(State(s): State<Shared>) -> Json<Vec<Job>> {
    Json(s.jobs.list())
}

async fn job(State(s): State<Shared>, Path(raw): Path<String>) -> Result<Json<Job>, ApiError> {
    let id: u64 = raw
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{raw}` is not a job id (a number)")))?;
    s.jobs.get(id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "no job {id} (finished jobs are kept for a while only)"
        ))
    })
}
