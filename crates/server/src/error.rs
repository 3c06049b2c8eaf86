//! The API's error answer: a status code and `{"error": "..."}` saying what to do.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Seconds a client is told to wait when every identify slot is taken: a few times what
/// one identification of a 3 min song takes against 11.9 h of music (1.7 s, BENCHMARKS.md).
pub const RETRY_AFTER_S: u32 = 5;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Set on 401: the `WWW-Authenticate` challenge.
    pub challenge: bool,
    /// Set on 503: seconds to wait before retrying.
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            challenge: false,
            retry_after_s: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn too_large(limit_bytes: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is larger than this server's limit of {limit_bytes} bytes \
                 (--max-upload-mb)"
            ),
        )
    }

    /// 503 with `Retry-After`: the server already `what` (e.g. "decodes 2 songs").
    pub fn busy(what: &str) -> Self {
        Self {
            retry_after_s: Some(RETRY_AFTER_S),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the server already {what}; retry in {RETRY_AFTER_S} s"),
            )
        }
    }

    /// 401 with a bearer challenge.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, message)
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// Maps an engine error: bad audio is the client's (422), a missing track 404, the
    /// rest the server's.
    pub fn from_engine(e: &engine::EngineError) -> Self {
        use engine::EngineError as E;
        match e {
            E::Audio { .. } | E::TooShort { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            E::NoSuchTrack(_) => Self::not_found(e.to_string()),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<index::IndexError> for ApiError {
    fn from(e: index::IndexError) -> Self {
        Self::internal(format!("store: {e}"))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("a worker failed: {e}"))
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        if self.challenge {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cratedigger\""),
            );
        }
        if let Some(s) = self.retry_after_s {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}
