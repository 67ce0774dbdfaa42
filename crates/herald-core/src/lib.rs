//! Herald's core model: the wire protocol shared by the server, the CLI, clients and benchmarks.

pub mod api;
pub mod change;
pub mod channel;
pub mod codes;
pub mod filter;
pub mod incoming;
pub mod protocol;
pub mod wire;

pub use codes::{Disconnect, ProtocolError};
