//! Connection and subscription JWTs, as Centrifugo defines them.
//!
//! Only the algorithms whose key is configured are accepted, so a token cannot pick its own
//! verification (HS256 signed with a public key, or `alg: none`).

use herald_core::protocol::RawJson;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Claims of a connection token.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConnectClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// Herald extension: roles for audience checks (`admin` sees every publication).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// When set, the connection expires at this time instead of `exp` (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

/// When a connection or subscription expires: `expire_at` overrides `exp`, and 0 means never.
fn expiry(expire_at: Option<u64>, exp: Option<u64>) -> Option<u64> {
    match expire_at {
        Some(0) => None,
        Some(at) => Some(at),
        None => exp,
    }
}

impl ConnectClaims {
    /// Unix time at which the connection expires, if it does.
    pub fn expires_at(&self) -> Option<u64> {
        expiry(self.expire_at, self.exp)
    }
}

/// Claims of a subscription token.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SubscribeClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

impl SubscribeClaims {
    /// Unix time at which the subscription expires, if it does.
    pub fn expires_at(&self) -> Option<u64> {
        expiry(self.expire_at, self.exp)
    }
}

struct Key {
    key: DecodingKey,
    algorithms: &'static [Algorithm],
}

/// Verifies tokens against the configured keys.
pub struct TokenVerifier {
    keys: Vec<Key>,
    audience: String,
    issuer: String,
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const ECDSA: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

impl TokenVerifier {
    /// Builds a verifier from the configured keys; a malformed PEM key is a start-up error.
    pub fn new(
        hmac_secret: &str,
        rsa_public_pem: &str,
        ecdsa_public_pem: &str,
        audience: &str,
        issuer: &str,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        if !hmac_secret.is_empty() {
            keys.push(Key { key: DecodingKey::from_secret(hmac_secret.as_bytes()), algorithms: HMAC });
        }
        if !rsa_public_pem.is_empty() {
            let key = DecodingKey::from_rsa_pem(rsa_public_pem.as_bytes())
                .map_err(|e| format!("client.token.rsa_public_key: not an RSA public key in PEM: {e}"))?;
            keys.push(Key { key, algorithms: RSA });
        }
        if !ecdsa_public_pem.is_empty() {
            let key = DecodingKey::from_ec_pem(ecdsa_public_pem.as_bytes())
                .map_err(|e| format!("client.token.ecdsa_public_key: not an ECDSA public key in PEM: {e}"))?;
            keys.push(Key { key, algorithms: ECDSA });
        }
        Ok(Self { keys, audience: audience.to_owned(), issuer: issuer.to_owned() })
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithms.contains(&header.alg))
            .ok_or_else(|| TokenError::Invalid(format!("algorithm {:?} is not accepted", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&self.audience]);
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&[&self.issuer]);
        }
        match jsonwebtoken::decode::<T>(token, &key.key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        self.decode(token)
    }

    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.decode(token)
    }
}

/// Signs claims with an HMAC secret (HS256): for `herald token` and tests.
pub fn sign_hs256<T: Serialize>(claims: &T, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn verifier() -> TokenVerifier {
        TokenVerifier::new("secret", "", "", "", "").unwrap()
    }

    #[test]
    fn valid_token() {
        let claims = ConnectClaims { sub: "42".into(), exp: Some(unix_now() + 60), ..Default::default() };
        let token = sign_hs256(&claims, "secret").unwrap();
        assert_eq!(verifier().verify_connect(&token).unwrap().sub, "42");
    }

    #[test]
    fn expired_token() {
        let claims = ConnectClaims { sub: "42".into(), exp: Some(unix_now() - 10), ..Default::default() };
        let token = sign_hs256(&claims, "secret").unwrap();
        assert_eq!(verifier().verify_connect(&token).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn wrong_secret_and_garbage() {
        let token = sign_hs256(&ConnectClaims { sub: "1".into(), ..Default::default() }, "other").unwrap();
        assert!(matches!(verifier().verify_connect(&token), Err(TokenError::Invalid(_))));
        assert!(matches!(verifier().verify_connect("not.a.token"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn alg_none_is_rejected() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(r#"{"sub":"admin"}"#));
        assert!(matches!(verifier().verify_connect(&token), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn rsa_algorithm_without_rsa_key_is_rejected() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token =
            format!("{}.{}.{}", b64.encode(r#"{"alg":"RS256"}"#), b64.encode(r#"{"sub":"1"}"#), b64.encode("x"));
        assert!(matches!(verifier().verify_connect(&token), Err(TokenError::Invalid(_))));
    }
}
