//! The hit lane: plain fresh cache hits on HTTP/1.1, answered before
//! Pingora builds a session for them.
//!
//! [`EdgeApp`] is the proxy service's Pingora [`ServerApp`]. It wraps
//! edgegate's [`HttpProxy`] and gives each HTTP/1.x connection one cheap
//! look at every request head first. A request the lane can answer
//! entirely from the store — a plain fresh hit, as `super::fresh`
//! defines it — is answered right there. Anything else goes to Pingora
//! unchanged: the bytes already read become the session's pipelined
//! prefix (Pingora's own mechanism for bytes read ahead of a session), and
//! the connection comes back to the lane when Pingora is done with it.
//!
//! # Why
//!
//! A fresh hit is the commonest request at an edge, and on one Pingora
//! spends more than the answer is worth. The cache load test
//! (`loadtest/cache.py`, 1 KiB object, one worker thread on one CPU, CPU
//! µs per request) measured:
//! - Pingora answering every request from `request_filter`, with no cache
//!   at all: 9.6 µs;
//! - haproxy answering from its RAM cache: 9.8 µs;
//! - a bare tokio + `httparse` responder writing the same bytes: 6.1 µs.
//!
//! So a third of what any Pingora-based hit costs is Pingora's per-request
//! session machinery (the case-preserving request header, the `ProxyHttp`
//! phases, the response header writer, the body writer and reuse
//! bookkeeping), none of which a stored response needs. The lane skips it
//! and spends what it saves on what a hit really needs: routing, the key,
//! the lookup, the headers.
//!
//! # What it answers
//!
//! Only what needs no judgement it does not share with the full path. The
//! request must be:
//! - on an HTTP/1.x connection (not h2, not h2c: with `server.h2c` on,
//!   plain-listener connections skip the lane, as it cannot hand an h2
//!   preface on);
//! - `GET` or `HEAD`, HTTP/1.1, an origin-form target that parses as a URI
//!   path and query and has no dot segments;
//! - one valid `Host`, no body framing (`Content-Length`,
//!   `Transfer-Encoding`), no `Expect`, `Upgrade` or `Connection` other than
//!   `keep-alive`, no range or conditional, and no `Cache-Control` or
//!   `Pragma` when the route honours a client's `no-cache`;
//! - within the route's header limit, on a caching route without filters;
//! - a plain fresh hit in the store for its key and variant;
//! - and the server is not shutting down.
//!
//! Everything else — a miss, a stale object, a malformed or unusual
//! request, a refusal — is Pingora's, through the same `ProxyHttp` code as
//! before, so smuggling checks, limits and RFC 9111 semantics keep one
//! implementation. The lane parses with the same `httparse` call Pingora
//! makes, so both read the same request from the same bytes.
//!
//! The answer carries the fields the in-Pingora fast path sets
//! (`fresh::hit_header`) and those Pingora's HTTP/1 writer adds
//! (`Date`, `Connection`), in the same name case. What every hit of an
//! object shares — its status line and stored fields — is serialised once
//! per object ([`HitWire`]); a hit appends its own `Age`, `Via`, request id
//! and `Cache-Status`. An integration test compares a lane answer with
//! Pingora's for the same object, field by field.
//! Metrics and the access log record a lane hit as any other hit.
//! `server.hit_lane = false` turns it off; a reload applies to the next
//! request on every connection.
//!
//! The same look at each request head also feeds the relay
//! (`proxy::relay`): the same plain shapes (ranges, conditionals and client
//! cache directives allowed) on routes without filters or caching are
//! proxied there, on edgegate's own HTTP/1.1 path (`server.relay`). When
//! neither can take anything in the current config, connections go
//! straight to Pingora and pay nothing for the lane.

use super::fresh::{hit_status, lookup, no_range_or_conditional};
use super::headers::{has_dot_segments, request_id};
use super::relay::{Outcome, Plan};
use super::EdgeProxy;
use crate::cache::key::{self, HeaderValues};
use crate::cache::storage::HitWire;
use crate::cache::CacheResult;
use crate::state::Shared;
use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// How long an idle keep-alive connection waits for its next request
/// (Pingora's default for the sessions it starts).
const IDLE: Duration = Duration::from_secs(60);
/// Request heads longer than this are left to Pingora (which enforces the
/// limits and answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Headers the lane parses; more go to Pingora.
const MAX_HEADERS: usize = 64;
/// Bodies up to this size are copied behind the head into one write.
const COALESCE_BODY: usize = 16 * 1024;

/// The proxy service's [`ServerApp`]: the hit lane in front of Pingora's
/// HTTP proxy (module docs).
pub struct EdgeApp {
    proxy: Arc<HttpProxy<EdgeProxy>>,
    shared: Arc<Shared>,
    closing: AtomicBool,
    closed: Notify,
}

impl EdgeApp {
    /// The lane in front of `proxy` (built and initialised by the caller).
    pub fn new(proxy: HttpProxy<EdgeProxy>, shared: Arc<Shared>) -> Self {
        Self {
            proxy: Arc::new(proxy),
            shared,
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        }
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tls = stream.get_ssl_digest().is_some();
        let h2c = self.proxy.server_options.as_ref().is_some_and(|o| o.h2c);
        let h1 = matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1));
        let hot = &self.shared.current().hot;
        if !h1 || (h2c && !tls) || !(hot.hit_lane || hot.relay) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        self.serve_h1(stream, tls, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
        ServerApp::cleanup(&*self.proxy).await;
    }
}

/// What the lane made of the bytes at the front of the buffer.
enum Look {
    /// Answered: the request head was this long.
    Served(usize),
    /// For the relay: the request head was this long.
    Relay(usize, Box<super::relay::Plan>),
    /// Not a whole request head yet.
    Incomplete,
    /// Pingora's to answer.
    Pingora,
}

impl EdgeApp {
    /// One HTTP/1.x connection: lane hits, everything else through Pingora.
    async fn serve_h1(self: &Arc<Self>, mut stream: Stream, tls: bool, shutdown: &ShutdownWatch) {
        let mut buf = BytesMut::with_capacity(4096);
        let mut out = Outbox::default();
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let mut to_pingora = *shutdown.borrow();
            while !to_pingora && !buf.is_empty() {
                match self.look(&buf, &stream, tls, &mut out) {
                    Look::Served(n) => buf.advance(n),
                    Look::Relay(n, plan) => {
                        // Answers go out in request order.
                        if !out.is_empty() && !out.send(&mut stream).await {
                            return;
                        }
                        match super::relay::relay(&self.shared, &mut stream, *plan).await {
                            Outcome::KeepAlive => buf.advance(n),
                            Outcome::Close => return,
                            Outcome::HandOver => to_pingora = true,
                        }
                    }
                    Look::Incomplete if buf.len() < MAX_HEAD => break,
                    Look::Incomplete | Look::Pingora => to_pingora = true,
                }
            }
            // Answers go out in request order: before Pingora takes the next.
            if !out.is_empty() && !out.send(&mut stream).await {
                return;
            }
            if to_pingora {
                let mut session = ServerSession::new_http1(stream);
                match settings.take() {
                    Some(s) => s.apply_to_session(&mut session),
                    None => session.set_keepalive(Some(IDLE.as_secs())),
                }
                if !buf.is_empty() {
                    // edgegate never turns Pingora's pipelining on, so the
                    // settings it hands back never carry a prefix of their own.
                    session.set_pipelined_prefix(std::mem::take(&mut buf));
                }
                let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                    return;
                };
                let (next, next_settings) = reused.consume();
                stream = next;
                settings = next_settings;
                buf.reserve(4096);
                continue;
            }
            if !self.read_more(&mut stream, &mut buf).await {
                return;
            }
        }
    }

    /// Reads more of the connection into `buf`. `false`: closed, idle too
    /// long, broken, or the service is stopping.
    async fn read_more(&self, stream: &mut Stream, buf: &mut BytesMut) -> bool {
        let closed = self.closed.notified();
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            biased;
            read = pingora::prelude::timeout(IDLE, stream.read_buf(buf)) => {
                matches!(read, Ok(Ok(n)) if n > 0)
            }
            _ = closed => false,
        }
    }

    /// Answers the request at the front of `buf` into `out` when it is a
    /// lane hit.
    fn look(&self, buf: &[u8], stream: &Stream, tls: bool, out: &mut Outbox) -> Look {
        let started = Instant::now();
        let generation = self.shared.current();
        if !(generation.hot.hit_lane || generation.hot.relay) {
            return Look::Pingora;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Look::Incomplete,
            Err(_) => return Look::Pingora,
        };
        let Some(plain) = PlainHead::of(&req) else {
            return Look::Pingora;
        };
        let routes = &generation.config.routes;
        let Some(route_id) = routes.find(plain.host, plain.path) else {
            return Look::Pingora;
        };
        let (Some(route), Some(chain), Some(metrics)) = (
            routes.get(route_id),
            generation.route_filters.get(route_id),
            generation.route_metrics.get(route_id),
        ) else {
            return Look::Pingora;
        };
        if !chain.filters.is_empty() || head_len > route.limits.max_header_bytes {
            return Look::Pingora;
        }
        let Some(policy) = route.cache.as_ref() else {
            // Not a caching route: the relay's, when it is on.
            if !generation.hot.relay {
                return Look::Pingora;
            }
            return Self::relay_plan(
                &plain,
                stream,
                tls,
                head_len,
                route_id,
                &generation,
                started,
            );
        };
        if !generation.hot.hit_lane || plain.conditional {
            return Look::Pingora;
        }
        if plain.directives && policy.honor_client_no_cache {
            return Look::Pingora;
        }
        let host = policies::route::normalize_host(plain.host);
        let url = key::url_identity(&host, plain.path, plain.query, policy.query);
        let primary = key::primary(&url, tls, &plain, policy, &[]);
        let now = SystemTime::now();
        let Some(object) = lookup(&self.shared.cache, &primary, &plain, policy, now) else {
            return Look::Pingora;
        };
        let hot = &generation.hot;
        let wire = object.hit_wire(|stored| hit_wire(stored, &hot.request_id_header));
        if wire.request_id_header != hot.request_id_header {
            // Renamed by a reload since the head was serialised: it is still
            // right unless the object carries a field of either name (the new
            // one Pingora's path replaces, the old one it keeps).
            let stored = &object.header().headers;
            if stored.contains_key(&hot.request_id_header)
                || stored.contains_key(&wire.request_id_header)
            {
                return Look::Pingora;
            }
        }
        let id = request_id(&plain, &hot.request_id_header);
        let (_, cache_status) = hit_status(&generation, &object, &primary);
        let status = object.header().status;
        // The fields `fresh::hit_header` sets and Pingora's writer adds, in
        // the name case Pingora writes them in.
        let t = &mut out.tail;
        t.reserve(wire.head.len() + 256);
        t.put_slice(&wire.head);
        t.put_slice(b"Age: ");
        // Writing into a BytesMut cannot fail.
        let _ = write!(t, "{}", object.age(now));
        if status == http::StatusCode::OK {
            t.put_slice(b"\r\nAccept-Ranges: bytes");
        }
        t.put_slice(b"\r\nvia: ");
        if let Some(prev) = wire
            .via
            .as_ref()
            .filter(|v| !v.as_bytes().trim_ascii().is_empty())
        {
            t.put_slice(prev.as_bytes());
            t.put_slice(b", ");
        }
        t.put_slice(hot.via_h1.as_bytes());
        t.put_slice(b"\r\n");
        t.put_slice(hot.request_id_header.as_str().as_bytes());
        t.put_slice(b": ");
        t.put_slice(id.as_bytes());
        t.put_slice(b"\r\ncache-status: ");
        t.put_slice(cache_status.as_bytes());
        t.put_slice(b"\r\nDate: ");
        t.put_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        t.put_slice(b"\r\nConnection: keep-alive\r\n\r\n");
        let bytes = if plain.head {
            0
        } else {
            out.body(object.body());
            object.body().len()
        };

        let status = status.as_u16();
        metrics.cache[CacheResult::Hit.index()].inc();
        self.shared.metrics.cache_lane_hits.inc();
        metrics.observe(status, started.elapsed().as_secs_f64());
        if generation.config.log.access_log {
            let client = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            crate::logout::access(
                &crate::logout::AccessRecord {
                    client,
                    method: if plain.head { "HEAD" } else { "GET" },
                    host: plain.host,
                    path: plain.path,
                    route: &route.name,
                    upstream: "-",
                    status,
                    bytes,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    attempts: 0,
                    request_id: &id,
                    principal: "-",
                    error: "",
                },
                generation.config.log.format,
            );
        }
        Look::Served(head_len)
    }
}

impl EdgeApp {
    /// What the relay needs to send a plain request upstream.
    fn relay_plan(
        plain: &PlainHead<'_, '_>,
        stream: &Stream,
        tls: bool,
        head_len: usize,
        route_id: usize,
        generation: &Arc<crate::state::Generation>,
        started: Instant,
    ) -> Look {
        let hot = &generation.hot;
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let id = request_id(plain, &hot.request_id_header);
        let forwarding =
            super::headers::forwarding(plain, client, tls, Some(plain.host), &hot.via_h1);
        let head = super::relay::upstream_head(
            if plain.head { "HEAD" } else { "GET" },
            plain.target,
            plain.headers,
            &forwarding,
            &hot.request_id_header,
            &id,
        );
        Look::Relay(
            head_len,
            Box::new(Plan {
                generation: Arc::clone(generation),
                route_id,
                head,
                host: plain.host.to_string(),
                request_id: id,
                head_request: plain.head,
                started,
                path: plain.path.to_string(),
                client,
            }),
        )
    }
}

/// Answers waiting to be written, in order: small bodies are copied
/// behind their head (one write for a typical hit, and for a pipelined
/// batch); large ones are sent from the store without a copy.
#[derive(Default)]
struct Outbox {
    chunks: Vec<Bytes>,
    tail: BytesMut,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }

    fn body(&mut self, body: &Bytes) {
        if body.len() <= COALESCE_BODY {
            self.tail.extend_from_slice(body);
        } else {
            self.chunks.push(self.tail.split().freeze());
            self.chunks.push(body.clone());
        }
    }

    /// Writes and flushes everything. `false`: the connection broke.
    async fn send(&mut self, stream: &mut Stream) -> bool {
        for chunk in self.chunks.drain(..) {
            if stream.write_all(&chunk).await.is_err() {
                return false;
            }
        }
        let tail = stream.write_all(&self.tail).await;
        self.tail.clear();
        tail.is_ok() && stream.flush().await.is_ok()
    }
}

/// The stored part of a hit's head (see [`HitWire`]): the status line as
/// Pingora's HTTP/1 writer makes it, then the stored fields in their stored
/// case and order, less those `fresh::hit_header` replaces or drops and
/// those Pingora's writer sets.
fn hit_wire(stored: &ResponseHeader, request_id_header: &http::HeaderName) -> HitWire {
    use http::header;
    let via = stored.headers.get(header::VIA).cloned();
    let mut kept = stored.clone();
    for name in [
        header::AGE,
        header::VIA,
        header::DATE,
        header::CONNECTION,
        super::CACHE_STATUS,
        request_id_header.clone(),
    ] {
        kept.remove_header(&name);
    }
    if kept.status == http::StatusCode::OK {
        kept.remove_header(&header::ACCEPT_RANGES);
    }
    for name in crate::cache::storage::TAG_HEADERS {
        kept.remove_header(name);
    }
    let mut head = BytesMut::with_capacity(512);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(kept.status.as_str().as_bytes());
    head.put_u8(b' ');
    if let Some(reason) = kept.get_reason_phrase() {
        head.put_slice(reason.as_bytes());
    }
    head.put_slice(b"\r\n");
    kept.header_to_h1_wire(&mut head);
    HitWire {
        request_id_header: request_id_header.clone(),
        head: head.freeze(),
        via,
    }
}

/// A request head the lane may answer: only the shapes whose meaning
/// needs no judgement beyond a cache lookup (module docs).
struct PlainHead<'h, 'b> {
    head: bool,
    /// The request target as sent.
    target: &'b str,
    /// It carries a range or conditional field (not a plain hit).
    conditional: bool,
    host: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    /// It carries `Cache-Control` or `Pragma`: a route that honours a
    /// client's `no-cache` leaves it to pingora-cache.
    directives: bool,
    headers: &'h [httparse::Header<'b>],
}

impl<'h, 'b> PlainHead<'h, 'b> {
    fn of(req: &'h httparse::Request<'h, 'b>) -> Option<Self> {
        let head = match req.method? {
            "GET" => false,
            "HEAD" => true,
            _ => return None,
        };
        let target = req.path?;
        // A fragment has no business in a request target; what `Uri` makes
        // of one is Pingora's to decide.
        if req.version? != 1 || !target.starts_with('/') || target.contains('#') {
            return None;
        }
        // What `http::Uri` accepts as an origin-form target, as Pingora
        // parses it.
        let pq = http::uri::PathAndQuery::try_from(target).ok()?;
        let path = &target[..pq.path().len()];
        if has_dot_segments(path) {
            return None;
        }
        let query = pq.query().map(|q| &target[target.len() - q.len()..]);
        let mut host = None;
        let mut directives = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("host") {
                if host.is_some() || !plain_host(h.value) {
                    return None;
                }
                host = std::str::from_utf8(h.value).ok();
            } else if is("connection") {
                if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            } else if is("cache-control") || is("pragma") {
                directives = true;
            } else if is("content-length")
                || is("transfer-encoding")
                || is("expect")
                || is("upgrade")
            {
                return None;
            }
        }
        let mut plain = Self {
            head,
            target,
            conditional: false,
            host: host?,
            path,
            query,
            directives,
            headers: req.headers,
        };
        plain.conditional = !no_range_or_conditional(&plain);
        Some(plain)
    }
}

/// A `Host` value of the plainest form: a name or address and an optional
/// port, nothing a router or Pingora could read two ways.
fn plain_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

impl HeaderValues for PlainHead<'_, '_> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}
