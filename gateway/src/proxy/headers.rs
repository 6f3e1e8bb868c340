//! Request checks and forwarding headers.

use super::errors::Refusal;
use crate::cache::key::HeaderValues;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, VIA,
};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use policies::{Route, RouteId, RouteTable};
use std::net::IpAddr;

/// The fields a message's `Connection` values (`connection`) nominate as
/// its hop's own (RFC 9110 §7.6.1), lowercased: a proxy forwards none of
/// them. Not among them: the connection options `close` and `keep-alive`,
/// the framing fields (`content-length`, `transfer-encoding`: every hop
/// frames its own message) and `upgrade` (a `101` passes the protocol
/// switch on; Pingora handles `Upgrade` itself).
pub fn connection_nominated<'a>(connection: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
    let mut out = Vec::new();
    for value in connection {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            let skip = token.is_empty()
                || [
                    "close",
                    "keep-alive",
                    "content-length",
                    "transfer-encoding",
                    "upgrade",
                ]
                .iter()
                .any(|k| token.eq_ignore_ascii_case(k.as_bytes()));
            if !skip {
                out.push(String::from_utf8_lossy(token).to_ascii_lowercase());
            }
        }
    }
    out
}

/// The client's request id when it is sane, else a fresh UUID.
pub fn request_id<R: HeaderValues + ?Sized>(req: &R, header: &http::HeaderName) -> String {
    if let Some(b) = req.first(header.as_str()) {
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic()) {
            // Checked graphic ASCII above.
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    uuid::Uuid::new_v4().to_string()
}

/// Whether raw HTTP/1 header bytes hold a `Content-Length` line. Pingora
/// drops `Content-Length` when `Transfer-Encoding` is present (RFC 9112
/// allows that), but a message carrying both is the classic smuggling vector
/// and is refused outright, so we look at what the client really sent.
fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|b| *b == b'\n').skip(1).any(|line| {
        let line = line.strip_prefix(b" ").unwrap_or(line);
        line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
    })
}

/// Whether the path holds `.` or `..` segments (raw or percent-encoded):
/// routes match on the raw path while origins normalise it, so
/// `/public/../admin` could slip past a route boundary.
pub(super) fn has_dot_segments(path: &str) -> bool {
    const DOTS: [&str; 6] = [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."];
    path.split('/')
        .any(|seg| DOTS.iter().any(|d| seg.eq_ignore_ascii_case(d)))
}

/// Framing, host and path checks, then the route match.
pub fn check_request(session: &Session, routes: &RouteTable) -> Result<RouteId, Refusal> {
    let req = session.req_header();
    if let Some(h1) = session.as_downstream().as_http1() {
        if req.headers.contains_key(TRANSFER_ENCODING)
            && raw_has_content_length(&h1.get_headers_raw_bytes())
        {
            return Err(Refusal::BadFraming);
        }
    }
    // Duplicate Content-Length values that differ (Pingora rejects these too,
    // this keeps the rule true whatever the codec).
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|v| v != first) || first.as_bytes().contains(&b',') {
            return Err(Refusal::BadFraming);
        }
    }
    let host = req
        .uri
        .host()
        .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()));
    let Some(host) = host else {
        return Err(Refusal::BadRequest);
    };
    let path = req.uri.path();
    if !path.starts_with('/')
        && req.method != http::Method::OPTIONS
        && req.method != http::Method::CONNECT
    {
        return Err(Refusal::BadRequest);
    }
    if has_dot_segments(path) {
        return Err(Refusal::BadRequest);
    }
    routes.find(host, path).ok_or(Refusal::NoRoute)
}

/// The route's header and declared body limits.
pub fn check_limits(session: &Session, route: &Route) -> Result<(), Refusal> {
    let req = session.req_header();
    let header_bytes = match session.as_downstream().as_http1() {
        Some(h1) => h1.get_headers_raw_bytes().len(),
        None => {
            req.uri.to_string().len()
                + req
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>()
        }
    };
    if header_bytes > route.limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    if let Some(len) = req.headers.get(CONTENT_LENGTH) {
        let declared: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Refusal::BadFraming)?;
        if declared > route.limits.max_body_bytes {
            return Err(Refusal::BodyTooLarge);
        }
    }
    Ok(())
}

/// `Via` with `hop` appended to what `headers` already carry.
pub fn via_appended(headers: &HeaderMap, hop: &HeaderValue) -> HeaderValue {
    let joined = via_joined(headers.get(VIA).map(|v| v.as_bytes()), hop);
    // Both parts are valid header values; so is their join.
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| hop.clone())
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Appends RFC 7239 `for=` node: IPv6 in quotes and brackets.
fn push_forwarded_node(out: &mut String, ip: IpAddr) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = match ip {
        IpAddr::V4(v4) => write!(out, "{v4}"),
        IpAddr::V6(v6) => write!(out, "\"[{v6}]\""),
    };
}

/// Appends `v`: bare when it is an RFC 7230 token, else quoted.
fn push_forwarded_value(out: &mut String, v: &str) {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        out.push_str(v);
    } else {
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// `prev, next` when the request already carries `name` (its first
/// field), else `next`.
fn appended<R: HeaderValues + ?Sized>(req: &R, name: &str, next: &str) -> String {
    match req.first(name) {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut out = String::with_capacity(prev.len() + 2 + next.len());
            out.push_str(&String::from_utf8_lossy(prev));
            out.push_str(", ");
            out.push_str(next);
            out
        }
        _ => next.to_string(),
    }
}

/// The forwarding fields edgegate sends upstream, computed from what the
/// client sent: one implementation for Pingora's request header and the
/// relay's raw one (`lane`).
pub struct Forwarding {
    /// `X-Forwarded-For`, when the client address is known.
    pub xff: Option<String>,
    /// `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// RFC 7239 `Forwarded`.
    pub forwarded: String,
    /// `Via`, with this hop appended.
    pub via: Vec<u8>,
}

/// [`Forwarding`] for a request to `authority` (the target's, else `Host`).
pub fn forwarding<R: HeaderValues + ?Sized>(
    req: &R,
    client: Option<IpAddr>,
    tls: bool,
    authority: Option<&str>,
    via_hop: &HeaderValue,
) -> Forwarding {
    let mut node = String::with_capacity(48);
    let xff = client.map(|ip| {
        push_forwarded_node(&mut node, ip);
        let bare = node.trim_matches(|c| c == '"' || c == '[' || c == ']');
        appended(req, "x-forwarded-for", bare)
    });
    let mut fwd = String::with_capacity(96);
    if client.is_some() {
        fwd.push_str("for=");
        fwd.push_str(&node);
        fwd.push(';');
    }
    if let Some(host) = authority {
        fwd.push_str("host=");
        push_forwarded_value(&mut fwd, host);
        fwd.push(';');
    }
    fwd.push_str(if tls { "proto=https" } else { "proto=http" });
    Forwarding {
        xff,
        proto: if tls { "https" } else { "http" },
        forwarded: appended(req, "forwarded", &fwd),
        via: via_joined(req.first("via"), via_hop),
    }
}

/// `prev, hop` when `prev` holds something, else `hop`.
pub fn via_joined(prev: Option<&[u8]>, hop: &HeaderValue) -> Vec<u8> {
    match prev {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + hop.len());
            joined.extend_from_slice(prev);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(hop.as_bytes());
            joined
        }
        _ => hop.as_bytes().to_vec(),
    }
}

/// `X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`, `Via` and the request id
/// on the request sent upstream.
pub fn forward(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    tls: bool,
    via_hop: &HeaderValue,
    request_id_header: &HeaderName,
    request_id: &str,
) -> Result<()> {
    let authority = match req.uri.authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string),
    };
    let f = forwarding(&*req, client, tls, authority.as_deref(), via_hop);
    if let Some(xff) = f.xff {
        req.insert_header(X_FORWARDED_FOR.clone(), xff)?;
    }
    req.insert_header(
        X_FORWARDED_PROTO.clone(),
        if tls { HTTPS.clone() } else { HTTP.clone() },
    )?;
    req.insert_header(FORWARDED.clone(), f.forwarded)?;
    // Both parts are valid header values; so is their join.
    let via = HeaderValue::from_bytes(&f.via).unwrap_or_else(|_| via_hop.clone());
    req.insert_header(VIA, via)?;
    req.insert_header(request_id_header.clone(), request_id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_nominated_fields() {
        let values: [&[u8]; 2] = [
            b" X-Hop , keep-alive,,close",
            b"Content-Length, x-two, Upgrade",
        ];
        assert_eq!(connection_nominated(values), ["x-hop", "x-two"]);
        assert!(connection_nominated([&b"keep-alive"[..]]).is_empty());
    }

    #[test]
    fn raw_content_length_detection() {
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\ncontent-length:5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }

    #[test]
    fn dot_segments() {
        assert!(has_dot_segments("/public/../admin"));
        assert!(has_dot_segments("/a/%2E%2E/b"));
        assert!(has_dot_segments("/./x"));
        assert!(!has_dot_segments("/a/..b/c"));
        assert!(!has_dot_segments("/file.txt"));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("host", "example.com:8080").unwrap();
        req.insert_header("x-forwarded-for", "203.0.113.9").unwrap();
        req.insert_header("forwarded", "for=203.0.113.9").unwrap();
        forward(
            &mut req,
            Some("2001:db8::1".parse().unwrap()),
            true,
            &HeaderValue::from_static("1.1 fra1"),
            &http::HeaderName::from_static("x-request-id"),
            "abc",
        )
        .unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9, 2001:db8::1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(
            req.headers["forwarded"],
            "for=203.0.113.9, for=\"[2001:db8::1]\";host=\"example.com:8080\";proto=https"
        );
        assert_eq!(req.headers["via"], "1.1 fra1");
        assert_eq!(req.headers["x-request-id"], "abc");
    }

    #[test]
    fn request_id_kept_or_generated() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let name = http::HeaderName::from_static("x-request-id");
        assert_eq!(request_id(&req, &name).len(), 36);
        req.insert_header("x-request-id", "client-id-1").unwrap();
        assert_eq!(request_id(&req, &name), "client-id-1");
        req.insert_header("x-request-id", "has space").unwrap();
        assert_ne!(request_id(&req, &name), "has space");
    }
}
