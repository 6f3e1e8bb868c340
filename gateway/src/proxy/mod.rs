//! The Pingora proxy: edgegate's request path.
//!
//! Each request pins the config [`Generation`] current when it started, so a
//! reload never changes routes or backends under a request in flight. The
//! phases, in Pingora's order:
//!
//! 1. `request_filter`: framing checks (request smuggling), route match,
//!    header and body limits, request id, then the route's request filters
//!    and, on caching routes, plain fresh hits (`fresh`). Anything refused
//!    here is answered by `respond` and never reaches an upstream.
//! 2. `upstream_peer`: pick a backend not tried yet; `fail_to_connect`
//!    ejects it passively and fails over; `error_while_proxy` retries
//!    idempotent requests on another backend.
//! 3. `upstream_request_filter` / `response_filter`: forwarding headers.
//! 4. `fail_to_proxy`: the one place that maps an error to what the client
//!    sees ([`errors::client_status`]).
//! 5. `logging`: metrics and the access log.
//!
//! In front of all of it, on HTTP/1.x connections, the hit lane ([`lane`])
//! answers plain fresh cache hits before Pingora builds a session, and hands
//! every other request to this path unchanged.

pub mod errors;
mod fresh;
mod headers;
pub mod lane;
mod relay;
mod transform;

use crate::cache::{self as edge_cache, CacheCtx};
use crate::filter_host::apply::{self, RequestPhase};
use crate::filter_host::RequestFacts;
use crate::state::{Generation, Shared};
use async_trait::async_trait;
use bytes::Bytes;
use errors::{client_status, Refusal};
use pingora::cache::{CacheKey, CacheMeta, CacheOptionOverrides, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state (Pingora's `CTX`).
pub struct RequestCtx {
    generation: Arc<Generation>,
    started: Instant,
    route: Option<policies::RouteId>,
    request_id: String,
    /// Backend indices already tried.
    tried: Vec<usize>,
    backend: Option<usize>,
    attempts: u32,
    body_bytes: u64,
    refusal: Option<Refusal>,
    /// Set when the route has filters: what they may read and what they set.
    facts: Option<Arc<RequestFacts>>,
    /// Normalised host the request was routed by.
    authority: String,
    /// Set on routes with caching on.
    cache: Option<Box<CacheCtx>>,
    /// The primary cache key, when the fresh-hit fast path computed it and
    /// found nothing it could serve (pingora-cache reuses it).
    cache_primary: Option<Vec<u8>>,
}

impl RequestCtx {
    fn route(&self) -> Option<&policies::Route> {
        self.route
            .and_then(|id| self.generation.config.routes.get(id))
    }
}

/// edgegate's [`ProxyHttp`] implementation.
pub struct EdgeProxy {
    shared: Arc<Shared>,
}

impl EdgeProxy {
    /// A proxy serving whatever generation `shared` holds.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Answers a refused request and ends it.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        let (status, body) = refusal.response();
        ctx.refusal = Some(refusal);
        // An unread request body would be taken for the next request.
        let close = refusal.closes_connection() || !session.is_body_empty();
        let id_header = ctx.generation.hot.request_id_header.clone();
        respond(session, status, body, &ctx.request_id, &id_header, close).await?;
        Ok(true)
    }
}

impl EdgeProxy {
    /// RFC 9111 §4.4: a successful unsafe request invalidates what is stored
    /// for its URL and for the `Location` and `Content-Location` it answered
    /// with, when those are on the same host.
    fn invalidate_after_unsafe(&self, session: &Session, ctx: &RequestCtx) {
        let method = &session.req_header().method;
        if method.is_safe() {
            return;
        }
        let req = session.req_header();
        let host = policies::route::normalize_host(request_host(req)).into_owned();
        let mut targets: Vec<(String, Option<String>)> = vec![(
            req.uri.path().to_string(),
            req.uri.query().map(str::to_string),
        )];
        if let Some(resp) = session.response_written() {
            for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
                let Some(v) = resp.headers.get(name).and_then(|v| v.to_str().ok()) else {
                    continue;
                };
                let Ok(uri) = v.parse::<http::Uri>() else {
                    continue;
                };
                let same_host = uri
                    .host()
                    .is_none_or(|h| policies::route::normalize_host(h) == host);
                if same_host && uri.path().starts_with('/') {
                    targets.push((uri.path().to_string(), uri.query().map(str::to_string)));
                }
            }
        }
        let routes = &ctx.generation.config.routes;
        for (path, query) in targets {
            let Some(policy) = routes
                .find(&host, &path)
                .and_then(|id| routes.get(id))
                .and_then(|r| r.cache.as_ref())
            else {
                continue;
            };
            let url = edge_cache::key::url_identity(&host, &path, query.as_deref(), policy.query);
            let n = self.shared.cache.store.purge_url(&url, false);
            let m = &self.shared.metrics;
            m.cache_purges.with_label_values(&["invalidation"]).inc();
            m.cache_purged_objects
                .with_label_values(&["invalidation"])
                .inc_by(n);
        }
    }

    /// Runs a route's request filters (before the cache lookup, so they
    /// guard cached content too). `Ok(true)`: the exchange was answered.
    async fn run_request_filters(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        chain: &crate::filter_host::FilterChain,
    ) -> Result<bool> {
        ctx.authority =
            policies::route::normalize_host(request_host(session.req_header())).into_owned();
        let mut facts = Arc::new(RequestFacts {
            client_ip: client_ip(session)
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            tls_sni: session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|t| t.extension.get::<crate::tls::ClientSni>())
                .map(|s| s.0.clone()),
            route: ctx.route().map(|r| r.name.clone()).unwrap_or_default(),
            pop: ctx.generation.config.pop_name.clone(),
            request_id: ctx.request_id.clone(),
            principal: None,
            labels: Vec::new(),
            cache_key: Vec::new(),
        });
        let outcome = if chain.has_request_phase() {
            apply::run_request_phase(
                chain,
                &mut facts,
                session.req_header_mut(),
                &ctx.authority,
                &self.shared.metrics,
            )
            .await
        } else {
            Ok(RequestPhase::Continue)
        };
        ctx.facts = Some(facts);
        match outcome {
            Ok(RequestPhase::Continue) => Ok(false),
            Ok(RequestPhase::Respond(answer)) => {
                let id_header = &ctx.generation.hot.request_id_header;
                respond_filter(session, answer, &ctx.request_id, id_header).await?;
                Ok(true)
            }
            Err(_) => self.refuse(session, ctx, Refusal::FilterFailed).await,
        }
    }
}

/// Writes a response a filter answered with.
async fn respond_filter(
    session: &mut Session,
    answer: apply::FilterResponse,
    request_id: &str,
    request_id_header: &http::HeaderName,
) -> Result<()> {
    let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 3))?;
    for (name, value) in answer.headers {
        resp.append_header(name, value)?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    resp.insert_header(request_id_header.clone(), request_id)?;
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(resp), answer.body.is_empty())
        .await?;
    if !answer.body.is_empty() {
        session
            .write_response_body(Some(Bytes::from(answer.body)), true)
            .await?;
    }
    Ok(())
}

/// Writes a short plain-text response and ends the exchange.
pub(crate) async fn respond(
    session: &mut Session,
    status: u16,
    body: &str,
    request_id: &str,
    request_id_header: &http::HeaderName,
    close: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if !request_id.is_empty() {
        resp.insert_header(request_id_header.clone(), request_id)?;
    }
    if close {
        session.set_keepalive(None);
        resp.insert_header(http::header::CONNECTION, "close")?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
        .await?;
    Ok(())
}

/// RFC 9211's header (a constant: no name parsing per response).
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// The headers edgegate adds to every response it sends downstream, from
/// the origin or the cache: `Via`, the request id, and on caching routes
/// `Cache-Status` (tag headers, meant for purging, stay private).
fn downstream_headers(
    version: http::Version,
    resp: &mut ResponseHeader,
    hot: &crate::state::HotValues,
    request_id: &str,
    cache_status: Option<String>,
) -> Result<()> {
    let hop = if version == http::Version::HTTP_2 {
        &hot.via_h2
    } else {
        &hot.via_h1
    };
    let via = headers::via_appended(&resp.headers, hop);
    resp.insert_header(http::header::VIA, via)?;
    resp.insert_header(hot.request_id_header.clone(), request_id)?;
    if let Some(status) = cache_status {
        resp.insert_header(CACHE_STATUS, status)?;
        for h in edge_cache::storage::TAG_HEADERS {
            resp.remove_header(h);
        }
    }
    Ok(())
}

/// The primary cache key of a request on a route caching by `policy`
/// (the URL as the route keys it, scheme, key headers and cookies, and the
/// parts request filters added).
fn cache_primary(session: &Session, ctx: &RequestCtx, policy: &policies::CachePolicy) -> Vec<u8> {
    let req = session.req_header();
    let host = policies::route::normalize_host(request_host(req));
    let url = edge_cache::key::url_identity(&host, req.uri.path(), req.uri.query(), policy.query);
    let parts = ctx.facts.as_ref().map_or(&[][..], |f| &f.cache_key[..]);
    edge_cache::key::primary(&url, is_tls(session), req, policy, parts)
}

/// The host a request is for (from the URI or `Host`), without normalising.
fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default()
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        self.shared.metrics.in_flight.inc();
        RequestCtx {
            generation: self.shared.current(),
            started: Instant::now(),
            route: None,
            request_id: String::new(),
            tried: Vec::new(),
            backend: None,
            attempts: 0,
            body_bytes: 0,
            refusal: None,
            facts: None,
            authority: String::new(),
            cache: None,
            cache_primary: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let id_header = ctx.generation.hot.request_id_header.clone();
        ctx.request_id = headers::request_id(session.req_header(), &id_header);

        let refusal =
            headers::check_request(session, &ctx.generation.config.routes).and_then(|route_id| {
                ctx.route = Some(route_id);
                let route = ctx
                    .generation
                    .config
                    .routes
                    .get(route_id)
                    .ok_or(Refusal::NoRoute)?;
                headers::check_limits(session, route)
            });
        if let Err(refusal) = refusal {
            return self.refuse(session, ctx, refusal).await;
        }
        let generation = Arc::clone(&ctx.generation);
        let Some(route_id) = ctx.route else {
            return Ok(false);
        };
        let chain = generation
            .route_filters
            .get(route_id)
            .filter(|c| !c.filters.is_empty());
        if let Some(chain) = chain {
            if self.run_request_filters(session, ctx, chain).await? {
                return Ok(true);
            }
        }
        self.serve_fresh(session, ctx, &generation).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if let Some(route) = ctx.route() {
                if ctx.body_bytes > route.limits.max_body_bytes {
                    ctx.refusal = Some(Refusal::BodyTooLarge);
                    return Error::e_explain(
                        HTTPStatus(413),
                        "request body over the route's limit",
                    );
                }
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let route_id = ctx
            .route
            .ok_or_else(|| Error::explain(InternalError, "no route matched"))?;
        let group = Arc::clone(&ctx.generation.route_upstreams[route_id]);
        let Some(i) = group.select(&ctx.tried) else {
            return Error::e_explain(
                ConnectNoRoute,
                "every backend of the upstream group was tried",
            );
        };
        ctx.tried.push(i);
        ctx.backend = Some(i);
        ctx.attempts += 1;
        let mut peer = group.peer(i);
        if let Some(route) = ctx.route() {
            peer.options.connection_timeout = Some(route.timeouts.connect);
            peer.options.total_connection_timeout = Some(route.timeouts.connect);
            peer.options.read_timeout = Some(route.timeouts.read);
            peer.options.write_timeout = Some(route.timeouts.write);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (Some(route_id), Some(i)) = (ctx.route, ctx.backend) else {
            return e;
        };
        let group = &ctx.generation.route_upstreams[route_id];
        group.report_connect_failure(i);
        self.shared
            .metrics
            .upstream_errors
            .with_label_values(&[
                group.config.name.as_str(),
                group.backends()[i].label.as_str(),
                "connect",
            ])
            .inc();
        // Nothing reached the backend: failing over is safe for any method.
        let budget = ctx.route().map_or(0, |r| r.retries).max(1) as usize;
        if ctx.tried.len() < group.backends().len() && ctx.tried.len() <= budget {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if let (Some(route_id), Some(i)) = (ctx.route, ctx.backend) {
            let group = &ctx.generation.route_upstreams[route_id];
            self.shared
                .metrics
                .upstream_errors
                .with_label_values(&[
                    group.config.name.as_str(),
                    group.backends()[i].label.as_str(),
                    "proxy",
                ])
                .inc();
        }
        let retries = ctx.route().map_or(0, |r| r.retries);
        let idempotent = session.req_header().method.is_idempotent();
        if !idempotent || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else if ctx.attempts <= retries && session.response_written().is_none() {
            // Idempotent and nothing sent to the client yet: another backend may do.
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if client_reused && e.retry() {
            // The connection came from the pool and the backend had given
            // up on it (a keep-alive timeout or request limit racing this
            // request): the backend is not at fault, so the retry may go
            // to it again, on a new connection. Without this, a one-backend
            // group answered 502 (every backend tried).
            if let Some(i) = ctx.backend {
                ctx.tried.retain(|&t| t != i);
            }
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(route_id), Some(i)) = (ctx.route, ctx.backend) {
            ctx.generation.route_upstreams[route_id].report_connect_success(i);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let hot = &ctx.generation.hot;
        let via = if upstream_request.version == http::Version::HTTP_2 {
            &hot.via_h2
        } else {
            &hot.via_h1
        };
        headers::forward(
            upstream_request,
            client_ip(session),
            is_tls(session),
            via,
            &hot.request_id_header,
            &ctx.request_id,
        )?;
        if let (Some(route), Some(route_id), Some(i)) = (ctx.route(), ctx.route, ctx.backend) {
            if !route.preserve_host {
                let backend = &ctx.generation.route_upstreams[route_id].backends()[i];
                upstream_request.insert_header(http::header::HOST, backend.label.as_str())?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let cache_status = ctx.cache.as_deref().map(|cx| {
            let cache = &session.cache;
            let fresh_until = cache.maybe_cache_meta().map(CacheMeta::fresh_until);
            let waited = cache.enabled() && cache.lock_duration().is_some();
            edge_cache::outcome(
                &ctx.generation.config.pop_name,
                cache.phase(),
                cx,
                fresh_until,
                waited,
            )
            .status
        });
        downstream_headers(
            session.req_header().version,
            resp,
            &ctx.generation.hot,
            &ctx.request_id,
            cache_status,
        )
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(cx) = ctx.cache.as_deref_mut() {
            cx.fwd_status = Some(resp.status.as_u16());
        }
        // Fields the origin's `Connection` names were for its hop only:
        // neither forwarded nor cached, nor shown to response filters.
        let nominated = headers::connection_nominated(
            resp.headers
                .get_all(http::header::CONNECTION)
                .iter()
                .map(|v| v.as_bytes()),
        );
        for name in nominated {
            resp.remove_header(&name);
        }
        // Response filters run before the cache stores the response, so what
        // is cached is what they made of it.
        let generation = Arc::clone(&ctx.generation);
        if let (Some(facts), Some(chain)) = (
            ctx.facts.as_ref(),
            ctx.route.and_then(|id| generation.route_filters.get(id)),
        ) {
            if chain.has_response_phase() {
                let outcome = apply::run_response_phase(
                    chain,
                    facts,
                    session.req_header(),
                    &ctx.authority,
                    resp,
                    &self.shared.metrics,
                )
                .await;
                if outcome.is_err() {
                    ctx.refusal = Some(Refusal::FilterFailed);
                    return Error::e_explain(
                        HTTPStatus(503),
                        "a fail-closed response filter failed",
                    );
                }
            }
        }
        Ok(())
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        let transforms = ctx
            .route
            .and_then(|id| ctx.generation.route_filters.get(id))
            .is_some_and(|c| c.has_body_phase());
        let method = &session.req_header().method;
        if !transforms || !matches!(*method, http::Method::GET | http::Method::HEAD) {
            return Ok(true);
        }
        transform::serve(self, session, ctx).await?;
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        let Some(policy) = ctx.route().and_then(|r| r.cache.as_ref()) else {
            return Ok(());
        };
        let mut cx = Box::<CacheCtx>::default();
        let req = session.req_header();
        if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
            cx.method_bypass = true;
            ctx.cache = Some(cx);
            return Ok(());
        }
        cx.client_no_cache = policy.honor_client_no_cache && fresh::client_no_cache(req);
        let lock_timeout = policy.lock_timeout;
        ctx.cache = Some(cx);
        let cache = &self.shared.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(lock_timeout);
        session.cache.enable(
            cache.store,
            None,
            Some(cache.predictor),
            Some(cache.lock),
            Some(overrides),
        );
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        let generation = Arc::clone(&ctx.generation);
        let policy = ctx
            .route
            .and_then(|id| generation.config.routes.get(id))
            .and_then(|r| r.cache.as_ref())
            .ok_or_else(|| Error::explain(InternalError, "no cache policy for a cached request"))?;
        let primary = match ctx.cache_primary.take() {
            Some(p) => p,
            None => cache_primary(session, ctx, policy),
        };
        if generation.config.cache.debug {
            if let Some(cx) = ctx.cache.as_deref_mut() {
                cx.key = Some(edge_cache::key::printable(&primary));
            }
        }
        let hash = self.shared.cache.primary_hash(&primary);
        let mut key = CacheKey::new(primary, "");
        key.set_primary_bin_override(hash);
        key.extensions
            .insert(edge_cache::storage::FillLimit(policy.max_object_size));
        Ok(key)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Self::CTX) {
        if let Some(cx) = ctx.cache.as_deref_mut() {
            cx.missed = true;
        }
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut pingora::cache::storage::HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<pingora::cache::ForcedFreshness>> {
        let forced = ctx.cache.as_deref().is_some_and(|c| c.client_no_cache);
        Ok((forced && is_fresh).then_some(pingora::cache::ForcedFreshness::ForceExpired))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        let Some(policy) = ctx.route().and_then(|r| r.cache.as_ref()) else {
            return Ok(RespCacheable::Uncacheable(
                pingora::cache::NoCacheReason::NeverEnabled,
            ));
        };
        Ok(edge_cache::policy::decide(
            policy,
            session.req_header(),
            resp,
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        let ignore = ctx
            .route()
            .and_then(|r| r.cache.as_ref())
            .map_or(&[][..], |p| &p.vary_ignore[..]);
        let variance = edge_cache::key::variance(meta, req, ignore);
        if let (Some(stored), Some(cx)) = (meta.variance(), ctx.cache.as_deref_mut()) {
            if variance != Some(stored) {
                cx.vary_miss = true;
            }
        }
        variance
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        if let (Some(HTTPStatus(code)), Some(cx)) =
            (error.map(|e| e.etype()), ctx.cache.as_deref_mut())
        {
            cx.fwd_status = Some(*code);
        }
        match error {
            // Stale-while-revalidate: the stored response's window (from the
            // origin or the route's grace) already allows it.
            None => true,
            Some(e) => match e.etype() {
                HTTPStatus(code) => matches!(code, 500 | 502 | 503 | 504),
                _ => e.esource() == &ErrorSource::Upstream,
            },
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (status, body) = client_status(e, ctx.refusal);
        if status > 0 && session.response_written().is_none() {
            let id_header = ctx.generation.hot.request_id_header.clone();
            if let Err(write_err) =
                respond(session, status, body, &ctx.request_id, &id_header, true).await
            {
                tracing::debug!(error = %write_err, "cannot send the error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let metrics = &self.shared.metrics;
        metrics.in_flight.dec();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route_name = ctx.route().map_or("-", |r| r.name.as_str());
        let elapsed = ctx.started.elapsed();
        let route_metrics = ctx
            .route
            .and_then(|id| ctx.generation.route_metrics.get(id));
        if let (Some(cx), Some(m)) = (ctx.cache.as_deref(), route_metrics) {
            let cache = &session.cache;
            let waited = cache.enabled() && cache.lock_duration().is_some();
            let phase = if cx.fresh_hit {
                pingora::cache::CachePhase::Hit
            } else {
                cache.phase()
            };
            m.cache[edge_cache::classify(phase, cx, waited).index()].inc();
            if waited {
                m.coalesced.inc();
            }
            if cx.method_bypass && (200..400).contains(&status) {
                self.invalidate_after_unsafe(session, ctx);
            }
        }
        match route_metrics {
            Some(m) => m.observe(status, elapsed.as_secs_f64()),
            None => {
                let label = crate::metrics::STATUS_LABELS[crate::metrics::status_index(status)];
                metrics
                    .requests
                    .with_label_values(&[route_name, label])
                    .inc();
                metrics
                    .duration
                    .with_label_values(&[route_name])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if ctx.generation.config.log.access_log {
            let upstream = match (ctx.route, ctx.backend) {
                (Some(r), Some(i)) => ctx.generation.route_upstreams[r].backends()[i]
                    .label
                    .as_str(),
                _ => "-",
            };
            let req = session.req_header();
            crate::logout::access(
                &crate::logout::AccessRecord {
                    client: client_ip(session),
                    method: req.method.as_str(),
                    host: req
                        .uri
                        .host()
                        .or_else(|| {
                            req.headers
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                        })
                        .unwrap_or("-"),
                    path: req.uri.path(),
                    route: route_name,
                    upstream,
                    status,
                    bytes: session.body_bytes_sent(),
                    duration_ms: elapsed.as_secs_f64() * 1000.0,
                    attempts: ctx.attempts,
                    request_id: &ctx.request_id,
                    principal: ctx
                        .facts
                        .as_ref()
                        .and_then(|f| f.principal.as_deref())
                        .unwrap_or("-"),
                    error: e.map(|e| e.etype().as_str()).unwrap_or(""),
                },
                ctx.generation.config.log.format,
            );
        }
    }
}
