//! Write access: a bearer token compared in constant time; no token configured means no
//! writes at all.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::error::ApiError;

/// Proof that a request may write (add or remove tracks, start jobs). As an extractor it
/// runs before the body is read, so a refused upload is never stored.
pub struct WriteAccess;

/// A refused write: the error, sent with `Connection: close`. The refusal comes before
/// the body is read, so the server closes the connection after answering; saying so lets
/// the client open a new one for its next request instead of reusing this one and losing
/// that request to the close (seen as an incomplete message in 1 of a few hundred test
/// runs).
pub struct Refused(ApiError);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

impl FromRequestParts<Arc<AppState>> for WriteAccess {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        check(
            state.config.token.as_deref(),
            parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .map(|()| WriteAccess)
        .map_err(Refused)
    }
}

/// Decides on the `Authorization` header given the configured token.
fn check(configured: Option<&str>, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(configured) = configured else {
        return Err(ApiError::forbidden(format!(
            "write endpoints are disabled: this server was started without a token \
             (start it with --token or {})",
            crate::TOKEN_ENV
        )));
    };
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return Err(ApiError::unauthorized(
            "this endpoint needs the server's token: send `Authorization: Bearer TOKEN`",
        ));
    };
    // blake3::Hash compares in constant time, so the answer's timing does not tell how
    // much of a guess was right.
    if blake3::hash(given.trim().as_bytes()) == blake3::hash(configured.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::forbidden("wrong token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn status(configured: Option<&str>, header: Option<&str>) -> Option<StatusCode> {
        check(configured, header).err().map(|e| e.status)
    }

    #[test]
    fn no_configured_token_refuses_every_write() {
        assert_eq!(status(None, None), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(None, Some("Bearer x")), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn missing_or_malformed_header_is_401_and_wrong_token_403() {
        assert_eq!(status(Some("s3cret"), None), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(Some("s3cret"), Some("Basic czNjcmV0")),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(Some("s3cret"), Some("Bearer s3cre")),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(Some("s3cret"), Some("Bearer s3cret")), None);
    }
}
