//! The authenticated caller of a request, for handlers. Tokens and where they are found are
//! `access`'s; this only turns them into a 401 at the edge.

use super::{ApiError, AppState};
use crate::access::token::Wants;
use crate::access::{token_from_parts, Claims, InvalidToken, Tokens};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// An authenticated caller. Extracting it answers 401 for a missing or bad token. Its
/// claims are private: a handler gets them only through [`AuthUser::opening`], which holds
/// the token's scope against what the handler opens.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuthUser(Claims);

impl AuthUser {
    /// The caller of a token found elsewhere than the request's usual places.
    pub(super) fn verify(tokens: &Tokens, token: &str) -> Result<AuthUser, ApiError> {
        Ok(AuthUser(tokens.verify(token)?))
    }

    /// The caller's claims, if their token's scope allows opening `wants` (403 if not).
    /// Every handler that accepts a token asks this first.
    pub(super) fn opening(self, wants: Wants) -> Result<Claims, ApiError> {
        match self.0.permits(wants) {
            true => Ok(self.0),
            false => Err(ApiError::OutOfScope),
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = token_from_parts(parts).ok_or(ApiError::Unauthorized("missing token"))?;
        let user = AuthUser::verify(&state.tokens, &token)?;
        // The connection keeps its slot from now on (see `admission`).
        super::admission::authenticated(&parts.extensions);
        Ok(user)
    }
}

impl From<InvalidToken> for ApiError {
    fn from(InvalidToken(why): InvalidToken) -> Self {
        ApiError::Unauthorized(why)
    }
}
