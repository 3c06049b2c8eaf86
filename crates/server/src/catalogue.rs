//! The catalogue's relations over HTTP: what a track samples, who samples it, the whole
//! sample graph (JSON or an export format), and scanning the library for them as a job.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use engine::graph::{ExportFormat, export, sentence};
use engine::{Edge, Node, ScanEvent, TrackRelations};
use serde::{Deserialize, Serialize};

use crate::api::{Shared, track_id};
use crate::auth::WriteAccess;
use crate::error::ApiError;
use crate::jobs::JobState;

/// An edge with the sentence that says it ("A samples B: 0:12-0:20 of A uses ...").
#[derive(Serialize)]
pub struct EdgeView {
    #[serde(flatten)]
    edge: Edge,
    sentence: String,
}

/// Every relation of one track, as [`TrackRelations`] sorts them.
#[derive(Serialize)]
pub struct RelationsView {
    track: Node,
    samples: Vec<EdgeView>,
    sampled_by: Vec<EdgeView>,
    shares_material: Vec<EdgeView>,
    duplicates: Vec<EdgeView>,
    others: Vec<Node>,
}

/// One kind of relation of a track, with the tracks on the other ends.
#[derive(Serialize)]
pub struct EdgesView {
    track: Node,
    edges: Vec<EdgeView>,
    others: Vec<Node>,
}

fn views(edges: Vec<Edge>, r: &TrackRelations) -> Vec<EdgeView> {
    edges
        .into_iter()
        .map(|edge| EdgeView {
            sentence: sentence(&edge, |id| r.node(id)),
            edge,
        })
        .collect()
}

async fn relations(s: &Shared, raw: &str) -> Result<TrackRelations, ApiError> {
    let id = track_id(raw)?;
    s.blocking(move |engine| {
        engine
            .relations_of(id)
            .map_err(|e| ApiError::from_engine(&e))
    })
    .await
}

pub async fn track_relations(
    State(s): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Json<RelationsView>, ApiError> {
    let r = relations(&s, &raw).await?;
    Ok(Json(RelationsView {
        samples: views(r.samples.clone(), &r),
        sampled_by: views(r.sampled_by.clone(), &r),
        shares_material: views(r.shares_material.clone(), &r),
        duplicates: views(r.duplicates.clone(), &r),
        track: r.track,
        others: r.others,
    }))
}

fn edges_view(edges: Vec<Edge>, r: TrackRelations) -> EdgesView {
    let named: Vec<u32> = edges.iter().map(|e| e.other(r.track.id)).collect();
    EdgesView {
        edges: views(edges, &r),
        others: r
            .others
            .into_iter()
            .filter(|n| named.contains(&n.id))
            .collect(),
        track: r.track,
    }
}

/// Earlier tracks this one samples (directed by release years).
pub async fn track_samples(
    State(s): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Json<EdgesView>, ApiError> {
    let r = relations(&s, &raw).await?;
    Ok(Json(edges_view(r.samples.clone(), r)))
}

/// Later tracks that sample this one.
pub async fn track_sampled_by(
    State(s): State<Shared>,
    Path(raw): Path<String>,
) -> Result<Json<EdgesView>, ApiError> {
    let r = relations(&s, &raw).await?;
    Ok(Json(edges_view(r.sampled_by.clone(), r)))
}

#[derive(Deserialize)]
pub struct GraphParams {
    /// `json` (default), `csv`, `graphml` or `dot`.
    format: Option<String>,
}

/// The whole sample graph.
pub async fn graph(
    State(s): State<Shared>,
    Query(params): Query<GraphParams>,
) -> Result<Response, ApiError> {
    let (format, content_type) = match params.format.as_deref().unwrap_or("json") {
        "json" => (ExportFormat::Json, "application/json"),
        "csv" => (ExportFormat::Csv, "text/csv; charset=utf-8"),
        "graphml" => (ExportFormat::GraphMl, "application/graphml+xml"),
        "dot" => (ExportFormat::Dot, "text/vnd.graphviz; charset=utf-8"),
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown graph format `{other}`: use json, csv, graphml or dot"
            )));
        }
    };
    let text = s
        .blocking(move |engine| {
            let graph = engine.graph().map_err(|e| ApiError::from_engine(&e))?;
            export(&graph, format).map_err(|e| ApiError::from_engine(&e))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Starts a scan of the library (only pairs of tracks not examined before); 202 with the
/// job, whose result is the scan's summary.
pub async fn start_scan(
    State(s): State<Shared>,
    _write: WriteAccess,
) -> Result<Response, ApiError> {
    s.room_for_a_job()?;
    let id = s.jobs.create("scan", 0);
    tokio::spawn(scan_job(s.clone(), id));
    Ok(s.job_accepted(id))
}

async fn scan_job(s: Shared, job: u64) {
    let _writer = s.writer.lock().await;
    s.jobs.update(job, |j| j.state = JobState::Running);
    let jobs = s.jobs.clone();
    let outcome = s
        .blocking(move |engine| {
            let mut failures: BTreeMap<u32, String> = BTreeMap::new();
            let summary = engine
                .scan(&mut |event| match event {
                    ScanEvent::Started { n_tracks, .. } => {
                        jobs.update(job, |j| j.total = n_tracks);
                    }
                    ScanEvent::Done { .. } => jobs.update(job, |j| j.done += 1),
                    ScanEvent::Failed { track, error, .. } => {
                        failures.insert(track, error.to_string());
                        jobs.update(job, |j| j.done += 1);
                    }
                })
                .map_err(|e| ApiError::from_engine(&e))?;
            let mut result =
                serde_json::to_value(&summary).map_err(|e| ApiError::internal(e.to_string()))?;
            result["failures"] = serde_json::json!(failures);
            Ok(result)
        })
        .await;
    s.jobs.update(job, |j| match outcome {
        Ok(result) => {
            j.state = JobState::Done;
            j.result = Some(result);
        }
        Err(e) => {
            j.state = JobState::Failed;
            j.error = Some(e.message);
        }
    });
}
