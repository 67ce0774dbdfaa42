//! The HTTP/1.1 handshake that turns a request into a WebSocket (RFC 6455, section 4.2.2).
//!
//! axum's `WebSocketUpgrade` does the same checks, but it hands the connection over only as its
//! own `WebSocket`, which hides the socket: Herald writes publication frames straight from the
//! shared bytes with vectored writes, so it takes the upgraded connection itself.

use axum::extract::Request;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::wire::WireFormat;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request that may become a WebSocket: the 101 answer to send and the connection to come.
pub struct Accepted {
    pub response: Response,
    pub on_upgrade: OnUpgrade,
    /// The protocol form the client asked for.
    pub format: WireFormat,
}

/// The WebSocket subprotocols of the client protocol: Centrifugo's SDKs ask for Protobuf with
/// `centrifuge-protobuf` (a browser drops the connection unless the answer names it).
use herald_core::wire::PROTOBUF_SUBPROTOCOL;
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// Which form of the protocol the client asked for, and the subprotocol to answer with: the
/// `Sec-WebSocket-Protocol` header first, then `?format=json|protobuf`.
fn choose_format(
    headers: &HeaderMap,
    format_query: Option<&str>,
) -> Result<(WireFormat, Option<&'static str>), Rejection> {
    if has_token(headers, SEC_WEBSOCKET_PROTOCOL, PROTOBUF_SUBPROTOCOL) {
        return Ok((WireFormat::Protobuf, Some(PROTOBUF_SUBPROTOCOL)));
    }
    if has_token(headers, SEC_WEBSOCKET_PROTOCOL, JSON_SUBPROTOCOL) {
        return Ok((WireFormat::Json, Some(JSON_SUBPROTOCOL)));
    }
    match format_query {
        None | Some("json") => Ok((WireFormat::Json, None)),
        Some("protobuf") => Ok((WireFormat::Protobuf, None)),
        Some(_) => Err(Rejection { status: StatusCode::BAD_REQUEST, message: "format must be json or protobuf" }),
    }
}

/// Why a request is not a WebSocket handshake Herald takes.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: &'static str,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455, section 4.4: name the version that is supported.
            response.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// Checks the opening handshake; a request that is not one is answered with why. `format_query`
/// is the request's `format` parameter.
pub fn accept(request: &mut Request, format_query: Option<&str>) -> Result<Accepted, Rejection> {
    let reject = |status: StatusCode, message: &'static str| Rejection { status, message };
    if request.method() != Method::GET {
        return Err(reject(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket handshake is a GET request"));
    }
    let headers = request.headers();
    if !has_token(headers, CONNECTION, "upgrade") {
        return Err(reject(StatusCode::BAD_REQUEST, "the Connection header must contain 'upgrade'"));
    }
    if !has_token(headers, UPGRADE, "websocket") {
        return Err(reject(StatusCode::BAD_REQUEST, "the Upgrade header must be 'websocket'"));
    }
    if headers.get(SEC_WEBSOCKET_VERSION).is_none_or(|version| version.as_bytes() != b"13") {
        return Err(reject(StatusCode::UPGRADE_REQUIRED, "only WebSocket version 13 is supported"));
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return Err(reject(StatusCode::BAD_REQUEST, "the Sec-WebSocket-Key header is missing"));
    };
    let (format, subprotocol) = choose_format(headers, format_query)?;
    let accept_key = derive_accept_key(key.as_bytes());
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(reject(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
    };
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    response_headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(subprotocol) = subprotocol {
        response_headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
    }
    match HeaderValue::from_str(&accept_key) {
        Ok(value) => response_headers.insert(SEC_WEBSOCKET_ACCEPT, value),
        Err(_) => return Err(reject(StatusCode::INTERNAL_SERVER_ERROR, "could not encode Sec-WebSocket-Accept")),
    };
    Ok(Accepted { response, on_upgrade, format })
}

/// Whether a comma-separated header holds `token` (case-insensitive), as `Connection: keep-alive,
/// Upgrade` does.
fn has_token(headers: &HeaderMap, name: axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri("/connection/websocket");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).expect("a valid request")
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn rejects_what_is_not_a_handshake() {
        let status = |method, headers: &[(&str, &str)]| match accept(&mut request(method, headers), None) {
            Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
            Err(rejection) => rejection.status,
        };
        assert_eq!(status(Method::POST, GOOD), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(status(Method::GET, &GOOD[1..]), StatusCode::BAD_REQUEST);
        assert_eq!(status(Method::GET, &[GOOD[0], GOOD[2], GOOD[3]]), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(Method::GET, &[GOOD[0], GOOD[1], ("sec-websocket-version", "8"), GOOD[3]]),
            StatusCode::UPGRADE_REQUIRED
        );
        assert_eq!(status(Method::GET, &GOOD[..3]), StatusCode::BAD_REQUEST);
        // A well-formed handshake on a connection hyper cannot upgrade (no `OnUpgrade`).
        assert_eq!(status(Method::GET, GOOD), StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        // RFC 6455, section 1.3.
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn the_subprotocol_or_the_query_picks_the_format() {
        let headers = |protocols: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocols).expect("a header value"));
            headers
        };
        let chosen = |headers: &HeaderMap, query| choose_format(headers, query).map_err(|r| r.status);
        assert_eq!(chosen(&HeaderMap::new(), None), Ok((WireFormat::Json, None)));
        assert_eq!(chosen(&HeaderMap::new(), Some("json")), Ok((WireFormat::Json, None)));
        assert_eq!(chosen(&HeaderMap::new(), Some("protobuf")), Ok((WireFormat::Protobuf, None)));
        assert_eq!(chosen(&HeaderMap::new(), Some("xml")), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            chosen(&headers("centrifuge-protobuf"), None),
            Ok((WireFormat::Protobuf, Some("centrifuge-protobuf")))
        );
        assert_eq!(
            chosen(&headers("other, centrifuge-protobuf"), Some("json")),
            Ok((WireFormat::Protobuf, Some("centrifuge-protobuf"))),
            "the subprotocol header wins over the query"
        );
        assert_eq!(chosen(&headers("centrifuge-json"), None), Ok((WireFormat::Json, Some("centrifuge-json"))));
        assert_eq!(chosen(&headers("chat"), None), Ok((WireFormat::Json, None)), "an unknown subprotocol is not named");
    }
}
