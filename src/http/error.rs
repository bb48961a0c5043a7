//! The one error type of the HTTP API. Every refusal is JSON:
//! `{"error":{"code":"...","message":"..."}}`.

//!
//! Converting into it is pure: what went wrong was logged where it happened (a failed read
//! by the batcher, once per query), and a refusal is not an event worth a log line.

use crate::access::{AccessError, Denied, ReadError};
use crate::stream::OpenError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("you may not watch this")]
    Forbidden,
    #[error("this token is scoped: it opens only its workspace's feed and snapshot")]
    OutOfScope,
    #[error("not found")]
    NotFound,
    #[error("too many open streams for this user")]
    TooManyStreams,
    #[error("the server is at its limit (open streams or queued reads)")]
    Overloaded,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("internal error")]
    Internal,
    /// A row in the host's tables that runwire cannot decode (names the column).
    #[error("this item's row cannot be read: {0}")]
    Unreadable(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden | ApiError::OutOfScope => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TooManyStreams => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Unavailable | ApiError::Timeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unreadable(_) => (StatusCode::INTERNAL_SERVER_ERROR, "unreadable"),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Denied(d) => d.into(),
            AccessError::Read(e) => e.into(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::NotFound => ApiError::NotFound,
            Denied::Forbidden => ApiError::Forbidden,
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Deadline(after) => ApiError::Timeout(after),
            ReadError::Overloaded => ApiError::Overloaded,
            ReadError::SourceDown | ReadError::Closed | ReadError::Unavailable(_) => {
                ApiError::Unavailable
            }
            ReadError::Database(_) => ApiError::Internal,
        }
    }
}

impl From<OpenError> for ApiError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Access(e) => e.into(),
            OpenError::TooManyStreams => ApiError::TooManyStreams,
            OpenError::Overloaded => ApiError::Overloaded,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        let retry_after = match self {
            ApiError::TooManyStreams => Some("10"),
            ApiError::Overloaded | ApiError::Unavailable | ApiError::Timeout(_) => Some("5"),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
