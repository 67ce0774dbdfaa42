use herald_core::ProtocolError;
use std::time::Duration;

/// What a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered with an error reply (`code`, `message`, `temporary`).
    #[error("server error: {0}")]
    Server(ProtocolError),
    /// The connection ended before the reply came, or the client is disconnected for good.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// No reply within the client's timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client was dropped.
    #[error("the client is closed")]
    Closed,
    /// The server sent something this client cannot read.
    #[error("unexpected reply: {0}")]
    Decode(String),
    /// The call was refused before anything was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A token callback failed.
    #[error("token: {0}")]
    Token(TokenError),
}

impl Error {
    /// The server's error code, when the server answered with an error.
    pub fn code(&self) -> Option<u32> {
        match self {
            Error::Server(error) => Some(error.code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Server(error) => error.temporary,
            Error::Disconnected(_) | Error::Timeout(_) => true,
            Error::Token(TokenError::Unavailable(_)) => true,
            _ => false,
        }
    }
}

impl From<ProtocolError> for Error {
    fn from(error: ProtocolError) -> Self {
        Error::Server(error)
    }
}

/// Why a token callback gave no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The user may not connect (or subscribe) any more: the client stops trying.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// No token right now (the auth backend is down, ...): the client tries again with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
}
