//! The authenticated caller of a request, for handlers. Tokens and where they are found are
//! `access`'s; this only turns them into a 401 at the edge.

use super::{ApiError, AppState};
use crate::access::{token_from_parts, Claims, InvalidToken};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// An authenticated caller. Extracting it answers 401 for a missing or bad token.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuthUser(pub Claims);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token_from_parts(parts).ok_or(ApiError::Unauthorized("missing token"))?;
        Ok(AuthUser(state.tokens.verify(&token)?))
    }
}

impl From<InvalidToken> for ApiError {
    fn from(InvalidToken(why): InvalidToken) -> Self {
        ApiError::Unauthorized(why)
    }
}
