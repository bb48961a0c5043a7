//! HS256 access tokens: the host app mints them with the shared secret, runwire verifies them.
//! A token is a bearer credential, so nothing here (or anywhere) logs one.
//!
//! Besides the signature and `exp`, every timestamp must be in range (a validly signed token
//! with `exp` = 10^19 must not overflow a deadline later), and `nbf` and `iat` must not be in
//! the future beyond a small clock skew.
//!
//! A token may carry a `scope` (`"workspace:42"`): it then opens only that workspace's feed
//! and its JSON snapshot, for embedding a live view without handing out a full user token
//! ([`Claims::permits`], asked wherever a token is accepted). A scope runwire does not
//! understand makes the token invalid, so a scope added later never widens access here.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Shortest secret accepted. HS256 with a shorter key is weaker than the hash itself, and the
/// host side's JWT libraries refuse such keys too.
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// The last second of the year 9999: no timestamp in a token may be later.
const MAX_TIMESTAMP: u64 = 253_402_300_799;
/// Clock skew tolerated between the host app and runwire for `nbf` and `iat`.
const CLOCK_LEEWAY_SECS: u64 = 60;

/// Why a token was refused (a 401 at the edge); the reason is safe to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub &'static str);

/// A secret that is too short to sign with.
#[derive(Debug, thiserror::Error)]
#[error(
    "the JWT secret must be at least {MIN_SECRET_BYTES} bytes, this one has {0}: generate one \
     with `openssl rand -hex 32` and give the same value to the host app"
)]
pub(crate) struct WeakSecret(pub usize);

/// Refuses secrets shorter than [`MIN_SECRET_BYTES`].
pub(crate) fn check_secret(secret: &str) -> Result<(), WeakSecret> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret(secret.len()));
    }
    Ok(())
}

/// What runwire needs from a token: who, until when, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user_id: i64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// None: everything the user may see.
    pub scope: Option<TokenScope>,
}

/// What a scoped token may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// The feed of one workspace (`/v1/workspaces/{id}/runs/events`) and its JSON snapshot
    /// (`/v1/workspaces/{id}`); nothing else.
    Workspace(i64),
}

impl std::str::FromStr for TokenScope {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, InvalidToken> {
        let invalid = InvalidToken("token scope is not understood (expected workspace:<id>)");
        let id = s.strip_prefix("workspace:").ok_or(invalid)?;
        // Only the canonical spelling: `+5` or `05` would be a second name for the same scope.
        match id.parse::<i64>() {
            Ok(n) if n > 0 && n.to_string() == id => Ok(TokenScope::Workspace(n)),
            _ => Err(invalid),
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenScope::Workspace(id) => write!(f, "workspace:{id}"),
        }
    }
}

/// What a request wants to open, as far as a token's scope is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wants {
    /// A workspace's feed or its JSON snapshot.
    Workspace(i64),
    /// Whom the token names (`GET /v1/session`): every token may ask, scoped or not.
    Identity,
    /// Anything else: run and pack streams and snapshots, the session cookie.
    Other,
}

impl Claims {
    /// Whether the token's scope allows what the request wants (an unscoped token allows
    /// everything; the user's access is decided separately, as for any token).
    pub(crate) fn permits(&self, wants: Wants) -> bool {
        match (self.scope, wants) {
            (None, _) | (_, Wants::Identity) => true,
            (Some(TokenScope::Workspace(w)), Wants::Workspace(asked)) => w == asked,
            (Some(TokenScope::Workspace(_)), Wants::Other) => false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(deserialize_with = "user_id", serialize_with = "as_string")]
    sub: i64,
    exp: u64,
    // Numbers, possibly fractional (RFC 7519 NumericDate); checked after decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

fn as_string<S: serde::Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// `sub` is a string per RFC 7519, but hosts commonly put the numeric id in; accept both.
fn user_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sub {
        Num(i64),
        Str(String),
    }
    match Sub::deserialize(d)? {
        Sub::Num(n) => Ok(n),
        Sub::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Tokens {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // `sub` is required by `Wire` itself, which also accepts a numeric `sub`.
        validation.set_required_spec_claims(&["exp"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs a token for `user_id` that expires `ttl_secs` from now.
    pub fn issue(&self, user_id: i64, ttl_secs: u64) -> String {
        self.issue_scoped(user_id, ttl_secs, None)
    }

    /// Signs a token for `user_id` that expires `ttl_secs` from now, limited to `scope`.
    pub fn issue_scoped(&self, user_id: i64, ttl_secs: u64, scope: Option<TokenScope>) -> String {
        let wire = Wire {
            sub: user_id,
            exp: now_secs().saturating_add(ttl_secs).min(MAX_TIMESTAMP),
            nbf: None,
            iat: None,
            scope: scope.map(|s| s.to_string()),
        };
        encode(&Header::new(Algorithm::HS256), &wire, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        match decode::<Wire>(token, &self.decoding, &self.validation) {
            Ok(data) => {
                check_times(&data.claims, now_secs())?;
                let scope = data.claims.scope.as_deref().map(str::parse).transpose()?;
                Ok(Claims {
                    user_id: data.claims.sub,
                    exp: data.claims.exp,
                    scope,
                })
            }
            Err(e) => Err(InvalidToken(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "token signature is invalid",
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    "token must be signed with HS256"
                }
                _ => "token is malformed",
            })),
        }
    }
}

/// The checks `jsonwebtoken` leaves to us (it has already verified `exp` against `now`).
fn check_times(wire: &Wire, now: u64) -> Result<(), InvalidToken> {
    let in_range = |t: f64| (0.0..=MAX_TIMESTAMP as f64).contains(&t);
    if wire.exp > MAX_TIMESTAMP || !wire.nbf.into_iter().chain(wire.iat).all(in_range) {
        return Err(InvalidToken("token timestamps are out of range"));
    }
    let latest = (now + CLOCK_LEEWAY_SECS) as f64;
    if wire.nbf.is_some_and(|nbf| nbf > latest) {
        return Err(InvalidToken("token is not valid yet (nbf)"));
    }
    if wire.iat.is_some_and(|iat| iat > latest) {
        return Err(InvalidToken("token is issued in the future (iat)"));
    }
    Ok(())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let tokens = Tokens::new(b"secret");
        let t = tokens.issue(42, 60);
        assert_eq!(tokens.verify(&t).unwrap().user_id, 42);
        assert!(Tokens::new(b"other").verify(&t).is_err());
        assert!(tokens.verify("not.a.token").is_err());
        assert!(tokens.verify("").is_err());
        let expired = encode(
            &Header::new(Algorithm::HS256),
            &Wire {
                sub: 1,
                exp: now_secs() - 5,
                nbf: None,
                iat: None,
                scope: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(tokens.verify(&expired).is_err());
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &Wire {
                sub: 1,
                exp: now_secs() + 60,
                nbf: None,
                iat: None,
                scope: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(tokens.verify(&hs512).is_err());
    }

    fn signed(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    }

    #[test]
    fn timestamps_out_of_range_or_in_the_future() {
        let tokens = Tokens::new(b"secret");
        let now = now_secs();
        let refused = |claims: serde_json::Value| match tokens.verify(&signed(claims.clone())) {
            Err(InvalidToken(why)) => why,
            other => panic!("{claims} was not refused: {other:?}"),
        };
        assert_eq!(
            refused(serde_json::json!({"sub": 1, "exp": 10_000_000_000_000_000_000u64})),
            "token timestamps are out of range"
        );
        for claims in [
            serde_json::json!({"sub": 1, "exp": now + 60, "nbf": 1e300}),
            serde_json::json!({"sub": 1, "exp": now + 60, "iat": -1}),
        ] {
            assert_eq!(refused(claims), "token timestamps are out of range");
        }
        assert_eq!(
            refused(serde_json::json!({"sub": 1, "exp": now + 600, "nbf": now + 120})),
            "token is not valid yet (nbf)"
        );
        assert_eq!(
            refused(serde_json::json!({"sub": 1, "exp": now + 600, "iat": now + 120})),
            "token is issued in the future (iat)"
        );
        // Within the leeway, fractional, and far but in range: accepted.
        for claims in [
            serde_json::json!({"sub": 1, "exp": now + 600, "nbf": now + 30, "iat": now + 30}),
            serde_json::json!({"sub": 1, "exp": now + 600, "nbf": now as f64 - 0.5}),
            serde_json::json!({"sub": 1, "exp": MAX_TIMESTAMP, "iat": now}),
        ] {
            assert!(tokens.verify(&signed(claims.clone())).is_ok(), "{claims}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret("").is_err());
        assert!(check_secret(&"x".repeat(31)).is_err());
        assert!(check_secret(&"x".repeat(32)).is_ok());
        let why = check_secret("short").unwrap_err().to_string();
        assert!(why.contains("openssl rand -hex 32"), "{why}");
    }

    #[test]
    fn scopes_round_trip_and_unknown_ones_are_refused() {
        let tokens = Tokens::new(b"secret");
        let scoped = tokens.issue_scoped(7, 60, Some(TokenScope::Workspace(3)));
        let claims = tokens.verify(&scoped).unwrap();
        assert_eq!(claims.scope, Some(TokenScope::Workspace(3)));
        assert!(claims.permits(Wants::Workspace(3)));
        assert!(!claims.permits(Wants::Workspace(4)));
        assert!(!claims.permits(Wants::Other));
        let full = tokens.verify(&tokens.issue(7, 60)).unwrap();
        assert!(full.permits(Wants::Other) && full.permits(Wants::Workspace(4)));
        let now = now_secs();
        for scope in [
            "workspace:",
            "workspace:0",
            "workspace:-1",
            "workspace:05",
            "workspace:+5",
            "tenant:3",
            "workspace:3 workspace:4",
            "",
            "workspace:99999999999999999999",
        ] {
            let t = signed(serde_json::json!({"sub": 1, "exp": now + 60, "scope": scope}));
            assert!(tokens.verify(&t).is_err(), "{scope:?}");
        }
        let not_a_string = signed(serde_json::json!({"sub": 1, "exp": now + 60, "scope": 3}));
        assert!(tokens.verify(&not_a_string).is_err());
        assert_eq!(
            "workspace:12".parse::<TokenScope>().unwrap().to_string(),
            "workspace:12"
        );
    }

    #[test]
    fn string_sub_is_accepted() {
        #[derive(Serialize)]
        struct S {
            sub: &'static str,
            exp: u64,
        }
        let t = encode(
            &Header::new(Algorithm::HS256),
            &S {
                sub: "7",
                exp: now_secs() + 60,
            },
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(Tokens::new(b"k").verify(&t).unwrap().user_id, 7);
    }
}
