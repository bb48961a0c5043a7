//! HS256 access tokens: the host app mints them with the shared secret, runwire verifies them.
//! A token is a bearer credential, so nothing here (or anywhere) logs one.

use crate::http::ApiError;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// What runwire needs from a token: who, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user_id: i64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(deserialize_with = "user_id", serialize_with = "as_string")]
    sub: i64,
    exp: u64,
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
        let wire = Wire {
            sub: user_id,
            exp: now_secs() + ttl_secs,
        };
        encode(&Header::new(Algorithm::HS256), &wire, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        match decode::<Wire>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(Claims {
                user_id: data.claims.sub,
                exp: data.claims.exp,
            }),
            Err(e) => Err(ApiError::Unauthorized(match e.kind() {
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
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(tokens.verify(&hs512).is_err());
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
