//! Error, unsubscribe and disconnect codes of the Centrifugo protocol.
//!
//! The numbers are part of the wire contract: SDKs decide whether to retry, resubscribe or reconnect
//! from them, so they must never change.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// An error returned in a reply (`{"id": N, "error": {...}}`) or an HTTP API answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolError {
    pub code: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
}

impl ProtocolError {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), temporary: false }
    }

    /// The same error with a more specific message; the code stays the contract.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn internal() -> Self {
        Self { code: 100, message: "internal server error".into(), temporary: true }
    }
    pub fn unauthorized() -> Self {
        Self::new(101, "unauthorized")
    }
    pub fn unknown_channel() -> Self {
        Self::new(102, "unknown channel")
    }
    pub fn permission_denied() -> Self {
        Self::new(103, "permission denied")
    }
    pub fn method_not_found() -> Self {
        Self::new(104, "method not found")
    }
    pub fn already_subscribed() -> Self {
        Self::new(105, "already subscribed")
    }
    pub fn limit_exceeded() -> Self {
        Self::new(106, "limit exceeded")
    }
    pub fn bad_request() -> Self {
        Self::new(107, "bad request")
    }
    pub fn not_available() -> Self {
        Self::new(108, "not available")
    }
    pub fn token_expired() -> Self {
        Self::new(109, "token expired")
    }
    pub fn expired() -> Self {
        Self::new(110, "expired")
    }
    pub fn too_many_requests() -> Self {
        Self { code: 111, message: "too many requests".into(), temporary: true }
    }
    pub fn unrecoverable_position() -> Self {
        Self::new(112, "unrecoverable position")
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ProtocolError {}

/// Why a connection is closed: sent as the WebSocket close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl Disconnect {
    pub const CONNECTION_CLOSED: Self = Self::fixed(3000, "connection closed");
    pub const SHUTDOWN: Self = Self::fixed(3001, "shutdown");
    pub const SERVER_ERROR: Self = Self::fixed(3004, "internal server error");
    pub const EXPIRED: Self = Self::fixed(3005, "connection expired");
    pub const SUBSCRIPTION_EXPIRED: Self = Self::fixed(3006, "subscription expired");
    pub const SLOW: Self = Self::fixed(3008, "slow");
    pub const WRITE_ERROR: Self = Self::fixed(3009, "write error");
    pub const INSUFFICIENT_STATE: Self = Self::fixed(3010, "insufficient state");
    pub const FORCE_RECONNECT: Self = Self::fixed(3011, "force reconnect");
    pub const NO_PONG: Self = Self::fixed(3012, "no pong");
    pub const TOO_MANY_REQUESTS: Self = Self::fixed(3013, "too many requests");
    pub const INVALID_TOKEN: Self = Self::fixed(3500, "invalid token");
    pub const BAD_REQUEST: Self = Self::fixed(3501, "bad request");
    pub const STALE: Self = Self::fixed(3502, "stale");
    pub const FORCE_NO_RECONNECT: Self = Self::fixed(3503, "force disconnect");
    pub const CONNECTION_LIMIT: Self = Self::fixed(3504, "connection limit");
    pub const CHANNEL_LIMIT: Self = Self::fixed(3505, "channel limit");
    pub const INAPPROPRIATE_PROTOCOL: Self = Self::fixed(3506, "inappropriate protocol");
    pub const PERMISSION_DENIED: Self = Self::fixed(3507, "permission denied");
    pub const NOT_AVAILABLE: Self = Self::fixed(3508, "not available");
    pub const TOO_MANY_ERRORS: Self = Self::fixed(3509, "too many errors");

    const fn fixed(code: u16, reason: &'static str) -> Self {
        Self { code, reason: Cow::Borrowed(reason) }
    }

    /// A disconnect with a caller's own code and reason (server API).
    pub fn custom(code: u16, reason: impl Into<String>) -> Self {
        Self { code, reason: Cow::Owned(reason.into()) }
    }

    /// Terminal codes tell the client not to reconnect.
    pub fn is_terminal(&self) -> bool {
        (3500..4000).contains(&self.code) || (4500..5000).contains(&self.code)
    }

    /// Looks up a well-known disconnect by code (used by the server API, where callers send a code).
    pub fn from_code(code: u16) -> Option<Self> {
        ALL_DISCONNECTS.iter().find(|d| d.code == code).cloned()
    }
}

const ALL_DISCONNECTS: &[Disconnect] = &[
    Disconnect::CONNECTION_CLOSED,
    Disconnect::SHUTDOWN,
    Disconnect::SERVER_ERROR,
    Disconnect::EXPIRED,
    Disconnect::SUBSCRIPTION_EXPIRED,
    Disconnect::SLOW,
    Disconnect::WRITE_ERROR,
    Disconnect::INSUFFICIENT_STATE,
    Disconnect::FORCE_RECONNECT,
    Disconnect::NO_PONG,
    Disconnect::TOO_MANY_REQUESTS,
    Disconnect::INVALID_TOKEN,
    Disconnect::BAD_REQUEST,
    Disconnect::STALE,
    Disconnect::FORCE_NO_RECONNECT,
    Disconnect::CONNECTION_LIMIT,
    Disconnect::CHANNEL_LIMIT,
    Disconnect::INAPPROPRIATE_PROTOCOL,
    Disconnect::PERMISSION_DENIED,
    Disconnect::NOT_AVAILABLE,
    Disconnect::TOO_MANY_ERRORS,
];

/// Unsubscribe push codes: below 2500 the client stays unsubscribed, from 2500 it resubscribes.
pub mod unsubscribe {
    pub const SERVER: u32 = 2000;
    pub const INSUFFICIENT_STATE: u32 = 2500;
    pub const EXPIRED: u32 = 2501;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_codes_are_the_35xx_range() {
        assert!(Disconnect::INVALID_TOKEN.is_terminal());
        assert!(Disconnect::TOO_MANY_ERRORS.is_terminal());
        assert!(!Disconnect::SHUTDOWN.is_terminal());
        assert!(!Disconnect::SLOW.is_terminal());
    }

    #[test]
    fn errors_serialize_without_false_temporary() {
        let json = serde_json::to_string(&ProtocolError::bad_request()).unwrap();
        assert_eq!(json, r#"{"code":107,"message":"bad request"}"#);
        let json = serde_json::to_string(&ProtocolError::internal()).unwrap();
        assert!(json.contains(r#""temporary":true"#));
    }

    #[test]
    fn disconnect_lookup_by_code() {
        assert_eq!(Disconnect::from_code(3008), Some(Disconnect::SLOW));
        assert_eq!(Disconnect::from_code(1234), None);
    }
}
