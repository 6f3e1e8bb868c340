//! The relay: plain HTTP/1.1 `GET`/`HEAD` requests proxied on edgegate's
//! own path, before Pingora builds a session for them.
//!
//! Pingora's proxy with nothing in it costs 1.4–1.5× nginx's CPU per
//! request here; a tokio proxy doing edgegate's per-request work costs
//! 0.8× (`loadtest/RESULTS.md`, session 6). The relay is that path for the
//! requests that need nothing else: the hit lane ([`super::lane`]) takes
//! them when they are `GET`/`HEAD` without a body on a route without
//! filters or caching, to a plain-HTTP upstream group.
//!
//! It sends what Pingora's path sends: the client's head less hop-by-hop
//! fields (as `pingora-proxy`'s `sanitize_h1_upstream_request`), plus the
//! forwarding fields ([`super::headers::forwarding`]), the request id, and
//! `Host` when the route does not preserve it. The answer is the origin's
//! with `Via` and the request id, and `Date` and `Connection` as Pingora's
//! writer sets them, less the fields its `Connection` names (both paths
//! drop those, [`super::headers::connection_nominated`]).
//!
//! Failures follow Pingora's path too: a connect failure ejects passively
//! and fails over; a pooled connection that turns out stale before any
//! answer byte is replaced by a fresh one; other failures retry on another
//! backend within the route's `retries`, then answer 502 (504 for
//! timeouts) and close. Bodies are `Content-Length`, chunked (passed
//! through, its end parsed strictly) or close-delimited (the client
//! connection then closes too).
//!
//! Upstream connections live in a per-thread pool per backend address (at
//! most 64 idle each, dropped when older than the group's
//! `keepalive_timeout` on their next use). Not done here, left to
//! Pingora's path: TLS upstreams, request bodies, upgrades, h2. Known gap:
//! the in-flight gauge does not count relayed requests.

use super::headers::Forwarding;
use crate::state::Generation;
use bytes::{Buf, BufMut, BytesMut};
use pingora::protocols::Stream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Request fields never sent upstream (hop-by-hop), and those the relay
/// sets itself.
const DROPPED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "x-forwarded-for",
    "x-forwarded-proto",
    "forwarded",
    "via",
];

/// Upstream response heads larger than this are a bad gateway.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Idle upstream connections kept per backend per thread.
const POOL_PER_BACKEND: usize = 64;

thread_local! {
    /// Idle upstream connections by backend, this thread's.
    static POOL: RefCell<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>> =
        RefCell::new(HashMap::new());
}

fn pool_take(addr: SocketAddr, idle: Duration) -> Option<TcpStream> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let conns = p.get_mut(&addr)?;
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() < idle {
                return Some(conn);
            }
        }
        None
    })
}

fn pool_give(addr: SocketAddr, conn: TcpStream) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let conns = p.entry(addr).or_default();
        if conns.len() >= POOL_PER_BACKEND {
            conns.remove(0);
        }
        conns.push((conn, Instant::now()));
    });
}

/// One request the lane gave the relay.
pub(super) struct Plan {
    pub generation: Arc<Generation>,
    pub route_id: usize,
    /// The upstream head without its `Host` line, without the final CRLF.
    pub head: Vec<u8>,
    /// The client's `Host`, sent when the route preserves it.
    pub host: String,
    pub request_id: String,
    pub head_request: bool,
    pub started: Instant,
    /// For the access log.
    pub path: String,
    pub client: Option<std::net::IpAddr>,
}

/// How the exchange ended.
pub(super) enum Outcome {
    /// Answered; the client connection may serve another request.
    KeepAlive,
    /// Answered (or failed) and the client connection must close.
    Close,
    /// Nothing was sent anywhere: Pingora's to answer.
    HandOver,
}

/// Builds the upstream head (request line and the client's fields less
/// the hop-by-hop ones and those set here, plus the forwarding fields and
/// the request id), without `Host` and the final CRLF.
pub(super) fn upstream_head(
    method: &str,
    target: &str,
    fields: &[httparse::Header<'_>],
    forwarding: &Forwarding,
    request_id_header: &http::HeaderName,
    request_id: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in fields {
        let drop = h.name.eq_ignore_ascii_case("host")
            || h.name.eq_ignore_ascii_case(request_id_header.as_str())
            || DROPPED.iter().any(|d| h.name.eq_ignore_ascii_case(d));
        if !drop {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(xff) = &forwarding.xff {
        put_field(&mut out, b"x-forwarded-for", xff.as_bytes());
    }
    put_field(&mut out, b"x-forwarded-proto", forwarding.proto.as_bytes());
    put_field(&mut out, b"forwarded", forwarding.forwarded.as_bytes());
    put_field(&mut out, b"via", &forwarding.via);
    put_field(
        &mut out,
        request_id_header.as_str().as_bytes(),
        request_id.as_bytes(),
    );
    out
}

fn put_field(out: &mut impl BufMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Why an attempt failed.
enum Fail {
    /// Before the upstream sent a byte of its answer.
    Early { timeout: bool },
    /// The answer was malformed or cut.
    Bad,
}

/// A parsed upstream answer head.
struct Answer {
    head_len: usize,
    status: u16,
    reason: String,
    fields: Vec<(String, Vec<u8>)>,
    body: Body,
    keep_alive: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Body {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Relays one request (module docs).
pub(super) async fn relay(
    shared: &crate::state::Shared,
    client: &mut Stream,
    plan: Plan,
) -> Outcome {
    let g = &plan.generation;
    let Some(route) = g.config.routes.get(plan.route_id) else {
        return Outcome::HandOver;
    };
    let group = Arc::clone(&g.route_upstreams[plan.route_id]);
    if group.config.tls_sni.is_some() {
        return Outcome::HandOver;
    }
    let mut tried: Vec<usize> = Vec::new();
    let mut attempts = 0u32;
    let mut fresh_only = false;
    let mut ubuf = BytesMut::with_capacity(4096);
    let connect_budget = route.retries.max(1) as usize;
    loop {
        let i = if fresh_only {
            *tried.last().unwrap_or(&0)
        } else {
            match group.select(&tried) {
                Some(i) => {
                    tried.push(i);
                    i
                }
                None => return fail(shared, client, &plan, 502, "-", attempts).await,
            }
        };
        attempts += 1;
        let backend = &group.backends()[i];
        let pooled = if fresh_only {
            None
        } else {
            pool_take(backend.addr, group.config.keepalive_timeout)
        };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(up) => up,
            None => {
                match pingora::prelude::timeout(
                    route.timeouts.connect,
                    TcpStream::connect(backend.addr),
                )
                .await
                {
                    Ok(Ok(up)) => {
                        let _ = up.set_nodelay(true);
                        group.report_connect_success(i);
                        up
                    }
                    Ok(Err(_)) | Err(_) => {
                        group.report_connect_failure(i);
                        count_error(shared, &group, i, "connect");
                        if tried.len() < group.backends().len() && tried.len() <= connect_budget {
                            fresh_only = false;
                            continue;
                        }
                        return fail(shared, client, &plan, 502, &backend.label, attempts).await;
                    }
                }
            }
        };
        fresh_only = false;
        // The head: the client's `Host`, or the backend's.
        let mut head = Vec::with_capacity(plan.head.len() + 64);
        head.extend_from_slice(&plan.head);
        if route.preserve_host {
            put_field(&mut head, b"Host", plan.host.as_bytes());
        } else {
            put_field(&mut head, b"Host", backend.label.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        ubuf.clear();
        let answer = match exchange(&mut up, &head, &mut ubuf, route, plan.head_request).await {
            Ok(a) => a,
            Err(Fail::Early { .. }) if reused => {
                // A pooled connection the origin had closed: once more on a
                // fresh one to the same backend.
                fresh_only = true;
                attempts -= 1;
                continue;
            }
            Err(e) => {
                count_error(shared, &group, i, "proxy");
                if attempts <= route.retries && tried.len() < group.backends().len() {
                    continue;
                }
                let status = match e {
                    Fail::Early { timeout: true } => 504,
                    _ => 502,
                };
                return fail(shared, client, &plan, status, &backend.label, attempts).await;
            }
        };
        // The answer head, as Pingora's writer would send it.
        let mut out = BytesMut::with_capacity(answer.head_len + 256);
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(answer.status.to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(answer.reason.as_bytes());
        out.put_slice(b"\r\n");
        let hot = &g.hot;
        let mut via_prev: Option<&[u8]> = None;
        let nominated = super::headers::connection_nominated(
            answer
                .fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .map(|(_, v)| v.as_slice()),
        );
        for (name, value) in &answer.fields {
            let n = name.as_str();
            if nominated.iter().any(|o| n.eq_ignore_ascii_case(o)) {
                continue;
            }
            if n.eq_ignore_ascii_case("via") {
                via_prev.get_or_insert(value);
                continue;
            }
            if n.eq_ignore_ascii_case("date")
                || n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("keep-alive")
                || n.eq_ignore_ascii_case("proxy-connection")
                || n.eq_ignore_ascii_case(hot.request_id_header.as_str())
            {
                continue;
            }
            put_field(&mut out, name.as_bytes(), value);
        }
        let close = answer.body == Body::UntilClose;
        put_field(
            &mut out,
            b"via",
            &super::headers::via_joined(via_prev, &hot.via_h1),
        );
        put_field(
            &mut out,
            hot.request_id_header.as_str().as_bytes(),
            plan.request_id.as_bytes(),
        );
        put_field(
            &mut out,
            b"Date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        put_field(
            &mut out,
            b"Connection",
            if close { b"close" } else { b"keep-alive" },
        );
        out.put_slice(b"\r\n");
        ubuf.advance(answer.head_len);
        let sent = send_body(client, &mut up, &mut ubuf, out, answer.body, route).await;
        let bytes = sent.unwrap_or(0);
        if sent.is_some() && answer.keep_alive && !close && ubuf.is_empty() {
            pool_give(backend.addr, up);
        }
        record(
            shared,
            &plan,
            answer.status,
            &backend.label,
            attempts,
            bytes,
        );
        return match sent {
            Some(_) if !close => Outcome::KeepAlive,
            _ => Outcome::Close,
        };
    }
}

/// Writes the head and reads the answer head.
async fn exchange(
    up: &mut TcpStream,
    head: &[u8],
    ubuf: &mut BytesMut,
    route: &policies::Route,
    head_request: bool,
) -> Result<Answer, Fail> {
    let t = &route.timeouts;
    match pingora::prelude::timeout(t.write, up.write_all(head)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(Fail::Early { timeout: false }),
        Err(_) => return Err(Fail::Early { timeout: true }),
    }
    loop {
        let n = match pingora::prelude::timeout(t.read, up.read_buf(ubuf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) if ubuf.is_empty() => return Err(Fail::Early { timeout: false }),
            Err(_) if ubuf.is_empty() => return Err(Fail::Early { timeout: true }),
            _ => return Err(Fail::Bad),
        };
        if n == 0 {
            return Err(if ubuf.is_empty() {
                Fail::Early { timeout: false }
            } else {
                Fail::Bad
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(ubuf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = resp.code.unwrap_or(0);
                if (100..200).contains(&status) {
                    // An interim answer to a bodiless request: skip it.
                    ubuf.advance(head_len);
                    continue;
                }
                return answer(&resp, head_len, head_request).ok_or(Fail::Bad);
            }
            Ok(httparse::Status::Partial) if ubuf.len() < MAX_RESPONSE_HEAD => {}
            _ => return Err(Fail::Bad),
        }
    }
}

/// The framing and fields of an answer head (RFC 9112 §6.3).
fn answer(
    resp: &httparse::Response<'_, '_>,
    head_len: usize,
    head_request: bool,
) -> Option<Answer> {
    let status = resp.code?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = resp.version? == 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v: usize = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
            if length.is_some_and(|l| l != v) {
                return None;
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if te && length.is_some() {
        // Ambiguous framing from the origin: never pass it on.
        return None;
    }
    let body = if head_request || status == 204 || status == 304 {
        Body::None
    } else if te {
        if chunked {
            Body::Chunked
        } else {
            Body::UntilClose
        }
    } else {
        match length {
            Some(0) => Body::None,
            Some(n) => Body::Length(n),
            None => Body::UntilClose,
        }
    };
    Some(Answer {
        head_len,
        status,
        reason: resp.reason.unwrap_or("").to_string(),
        fields: resp
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        body,
        keep_alive: !close,
    })
}

/// Sends the head and the body. `Some(body bytes)` when the whole answer
/// went out.
async fn send_body(
    client: &mut Stream,
    up: &mut TcpStream,
    ubuf: &mut BytesMut,
    mut out: BytesMut,
    body: Body,
    route: &policies::Route,
) -> Option<usize> {
    let read = route.timeouts.read;
    let mut sent = 0usize;
    match body {
        Body::None => {}
        Body::Length(n) => {
            let mut left = n;
            loop {
                let take = left.min(ubuf.len());
                out.put_slice(&ubuf[..take]);
                ubuf.advance(take);
                left -= take;
                sent += take;
                if left == 0 {
                    break;
                }
                client.write_all(&out).await.ok()?;
                out.clear();
                refill(up, ubuf, read).await?;
            }
        }
        Body::Chunked => {
            let mut parser = Chunked::default();
            loop {
                let used = parser.feed(ubuf)?;
                out.put_slice(&ubuf[..used]);
                ubuf.advance(used);
                sent += used;
                if parser.done() {
                    break;
                }
                client.write_all(&out).await.ok()?;
                out.clear();
                refill(up, ubuf, read).await?;
            }
        }
        Body::UntilClose => loop {
            sent += ubuf.len();
            out.put_slice(ubuf);
            ubuf.clear();
            client.write_all(&out).await.ok()?;
            out.clear();
            match pingora::prelude::timeout(read, up.read_buf(ubuf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                _ => return None,
            }
        },
    }
    client.write_all(&out).await.ok()?;
    client.flush().await.ok()?;
    Some(sent)
}

async fn refill(up: &mut TcpStream, ubuf: &mut BytesMut, read: Duration) -> Option<()> {
    match pingora::prelude::timeout(read, up.read_buf(ubuf)).await {
        Ok(Ok(n)) if n > 0 => Some(()),
        _ => None,
    }
}

/// Finds where a chunked body ends, byte by byte, strictly (CRLF line
/// ends, hex sizes, bounded extensions and trailers).
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// How much of `buf` belongs to the body (all of it unless the end is
    /// in it); `None` when the framing is broken.
    fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            if self.state == Data {
                let take = (self.size as usize).min(buf.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() && self.digits < 16 => {
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16)?);
                    self.digits += 1;
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => {
                    self.line = 0;
                    Ext
                }
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Ext, b'\r') => SizeLf,
                (Ext, b'\n') => return None,
                (Ext, _) => {
                    self.line += 1;
                    if self.line > 4096 {
                        return None;
                    }
                    Ext
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, _) => {
                    self.line = 1;
                    Trailer
                }
                (Trailer, b'\r') => TrailerLf,
                (Trailer, b'\n') => return None,
                (Trailer, _) => {
                    self.line += 1;
                    if self.line > 8192 {
                        return None;
                    }
                    Trailer
                }
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return None,
            };
        }
        Some(i)
    }
}

fn count_error(
    shared: &crate::state::Shared,
    group: &crate::upstream::UpstreamGroup,
    i: usize,
    kind: &str,
) {
    shared
        .metrics
        .upstream_errors
        .with_label_values(&[
            group.config.name.as_str(),
            group.backends()[i].label.as_str(),
            kind,
        ])
        .inc();
}

/// Answers a failed exchange as `fail_to_proxy` does, and closes.
async fn fail(
    shared: &crate::state::Shared,
    client: &mut Stream,
    plan: &Plan,
    status: u16,
    upstream: &str,
    attempts: u32,
) -> Outcome {
    let body: &[u8] = if status == 504 {
        b"gateway timeout: the upstream did not answer in time\n"
    } else {
        b"bad gateway: the upstream failed\n"
    };
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    put_field(&mut out, b"Content-Type", b"text/plain; charset=utf-8");
    put_field(
        &mut out,
        b"Content-Length",
        body.len().to_string().as_bytes(),
    );
    put_field(&mut out, b"Cache-Control", b"no-store");
    put_field(
        &mut out,
        plan.generation.hot.request_id_header.as_str().as_bytes(),
        plan.request_id.as_bytes(),
    );
    put_field(
        &mut out,
        b"Date",
        pingora::protocols::http::date::get_cached_date().as_bytes(),
    );
    put_field(&mut out, b"Connection", b"close");
    out.put_slice(b"\r\n");
    if !plan.head_request {
        out.put_slice(body);
    }
    let _ = client.write_all(&out).await;
    let _ = client.flush().await;
    record(shared, plan, status, upstream, attempts, 0);
    Outcome::Close
}

/// Metrics and the access log, as `logging` records them.
fn record(
    shared: &crate::state::Shared,
    plan: &Plan,
    status: u16,
    upstream: &str,
    attempts: u32,
    bytes: usize,
) {
    shared.metrics.relayed.inc();
    let g = &plan.generation;
    let elapsed = plan.started.elapsed();
    if let Some(m) = g.route_metrics.get(plan.route_id) {
        m.observe(status, elapsed.as_secs_f64());
    }
    if g.config.log.access_log {
        let route = g
            .config
            .routes
            .get(plan.route_id)
            .map_or("-", |r| r.name.as_str());
        crate::logout::access(
            &crate::logout::AccessRecord {
                client: plan.client,
                method: if plan.head_request { "HEAD" } else { "GET" },
                host: &plan.host,
                path: &plan.path,
                route,
                upstream,
                status,
                bytes,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                attempts,
                request_id: &plan.request_id,
                principal: "-",
                error: "",
            },
            g.config.log.format,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Chunked;

    /// Where `body` ends when fed in pieces of `step` bytes.
    fn end(body: &[u8], step: usize) -> Option<usize> {
        let mut c = Chunked::default();
        let mut at = 0;
        while at < body.len() {
            let piece = &body[at..(at + step).min(body.len())];
            let used = c.feed(piece)?;
            at += used;
            if c.done() {
                return Some(at);
            }
        }
        None
    }

    #[test]
    fn chunked_ends_are_found_whatever_the_data_and_the_pieces() {
        // Data that looks like a last chunk, an extension, trailers, and
        // the next answer's bytes after the end.
        let body = b"5\r\n0\r\n\r\n\r\n3;name=v\r\nabc\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 200";
        let whole = body.len() - b"HTTP/1.1 200".len();
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(end(body, step), Some(whole), "step {step}");
        }
        assert_eq!(end(b"0\r\n\r\n", 1), Some(5));
        // A chunk whose data is blank lines is data, not the end.
        let blank = b"2\r\nab\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n";
        assert_eq!(end(blank, 1), Some(blank.len()));
        assert_eq!(end(b"A\r\n0123456789\r\n0\r\n\r\n", 4), Some(20));
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        for bad in [
            &b"Z\r\n"[..],
            b"\r\n",
            b"5\nabcde\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n",
            b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
            b"11111111111111111\r\n",
        ] {
            assert_eq!(end(bad, 1), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
