//! Fresh cache hits answered in `request_filter`, before pingora-cache runs.
//!
//! On a hit pingora-cache walks its whole state machine: cache-key callback,
//! predictor, lookup (which rebuilds a `CacheMeta`, cloning the stored
//! header), freshness and hit filters, then a second header copy for `Age`,
//! range and conditional handling. A profile of the hit path put that at
//! ~12% of the CPU of a 1 KiB hit, the difference between edgegate and a
//! bare Pingora responder.
//!
//! Most hits at an edge are the simplest kind: a fresh object, a plain
//! `GET`/`HEAD` with no conditional or range header, and either a response
//! that does not vary or the variant stored first (the primary slot, whose
//! `Vary` match is checked here exactly as pingora-cache checks it). Those
//! are answered here straight from the store with one header clone. Every
//! other case — stale objects (stale-while-revalidate, stale-if-error),
//! soft-purged ones, other variants, ranges, `If-None-Match` /
//! `If-Modified-Since` (which may earn a `304`), a client `no-cache` the
//! route honours, a request body — falls through to pingora-cache
//! unchanged, so RFC 9111 semantics have one implementation. The response
//! is what pingora-cache sends for the same hit: the stored header with
//! `Age` (replacing any stored one), as HTTP/1.1, `Accept-Ranges: bytes` on
//! a `200`, plus edgegate's downstream headers and
//! `Cache-Status: <pop>; hit; ttl=N`. An integration test compares the two
//! paths header by header.

use super::{cache_primary, downstream_headers, EdgeProxy, RequestCtx};
use crate::cache::key::HeaderValues;
use crate::cache::storage::Object;
use crate::cache::{self as edge_cache, CacheCtx};
use crate::state::Generation;
use pingora::cache::CachePhase;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::SystemTime;

/// Request headers that make a hit more than "send the stored response".
const NOT_PLAIN: [&str; 6] = [
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
];

/// The client asked for revalidation (`Cache-Control: no-cache`, or
/// `Pragma: no-cache` from HTTP/1.0 clients).
pub fn client_no_cache(req: &RequestHeader) -> bool {
    use pingora::cache::cache_control::CacheControl;
    CacheControl::from_req_headers(req).is_some_and(|c| c.no_cache())
        || req
            .headers
            .get(http::header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"))
}

/// Whether the request carries none of the headers (ranges, conditionals)
/// that make a hit more than sending the stored response.
pub(super) fn no_range_or_conditional<R: HeaderValues + ?Sized>(req: &R) -> bool {
    !NOT_PLAIN.iter().any(|h| req.first(h).is_some())
}

/// Whether the request is one the fast path may answer, given the policy.
fn plain_request(req: &RequestHeader, policy: &policies::CachePolicy) -> bool {
    matches!(req.method, http::Method::GET | http::Method::HEAD)
        && no_range_or_conditional(req)
        && !(policy.honor_client_no_cache && client_no_cache(req))
}

/// Whether the object in the primary slot is the variant this request asks
/// for: pingora-cache's rule (`cache_vary_filter`, then
/// `cache_vary_lookup`), so `Vary: Accept-Encoding` objects — most of an
/// edge's — take the fast path for the variant stored first. Any other
/// variant lives in a secondary slot, which pingora-cache finds.
fn is_this_variant<R: HeaderValues + ?Sized>(
    object: &Object,
    req: &R,
    policy: &policies::CachePolicy,
) -> bool {
    let stored = &object.header().headers;
    if !stored.contains_key(http::header::VARY) {
        return object.variance().is_none();
    }
    // `Vary: *` is never stored; never serve it blind either.
    let Some(names) = edge_cache::key::vary_names(stored) else {
        return false;
    };
    match edge_cache::key::variance_for(&names, req, &policy.vary_ignore) {
        None => true,
        wanted => wanted == object.variance(),
    }
}

/// The fresh object stored under `primary` when it is the variant `req`
/// asks for.
pub(super) fn lookup<R: HeaderValues + ?Sized>(
    cache: &edge_cache::Cache,
    primary: &[u8],
    req: &R,
    policy: &policies::CachePolicy,
    now: SystemTime,
) -> Option<Arc<Object>> {
    let url = edge_cache::storage::url_of(primary);
    cache
        .store
        .fresh(url, &cache.primary_hash(primary), now)
        .filter(|o| is_this_variant(o, req, policy))
}

/// What a fresh hit records: its cache context (`Cache-Status`'s `key` in
/// debug mode) and its `Cache-Status` value.
pub(super) fn hit_status(
    generation: &Generation,
    object: &Object,
    primary: &[u8],
) -> (CacheCtx, String) {
    let mut cx = CacheCtx {
        fresh_hit: true,
        ..CacheCtx::default()
    };
    if generation.config.cache.debug {
        cx.key = Some(edge_cache::key::printable(primary));
    }
    let status = edge_cache::outcome(
        &generation.config.pop_name,
        CachePhase::Hit,
        &cx,
        Some(object.fresh_until()),
        false,
    )
    .status;
    (cx, status)
}

/// The response header of a fresh hit on HTTP/1.1: what pingora-cache
/// sends for it (the stored header, `Age`, `Accept-Ranges` on a `200`)
/// plus edgegate's downstream headers.
fn hit_header(
    object: &Object,
    now: SystemTime,
    generation: &Generation,
    request_id: &str,
    cache_status: String,
) -> Result<Box<ResponseHeader>> {
    let mut header = Box::new(object.header().clone());
    header.insert_header(http::header::AGE, object.age(now))?;
    header.set_version(http::Version::HTTP_11);
    if header.status == http::StatusCode::OK {
        // pingora-cache's range filter advertises ranges on every whole
        // 200 it could have served a range of (as nginx does).
        header.insert_header(http::header::ACCEPT_RANGES, "bytes")?;
    }
    downstream_headers(
        http::Version::HTTP_11,
        &mut header,
        &generation.hot,
        request_id,
        Some(cache_status),
    )?;
    Ok(header)
}

impl EdgeProxy {
    /// Answers the request from the store when it is a plain fresh hit
    /// (module docs). `Ok(false)`: not answered; pingora-cache (or the
    /// origin) takes it from here.
    pub(super) async fn serve_fresh(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        generation: &Generation,
    ) -> Result<bool> {
        let Some(policy) = ctx
            .route
            .and_then(|id| generation.config.routes.get(id))
            .and_then(|r| r.cache.as_ref())
        else {
            return Ok(false);
        };
        if !plain_request(session.req_header(), policy) || !session.is_body_empty() {
            return Ok(false);
        }
        let primary = cache_primary(session, ctx, policy);
        let now = SystemTime::now();
        let Some(object) = lookup(
            &self.shared.cache,
            &primary,
            session.req_header(),
            policy,
            now,
        ) else {
            ctx.cache_primary = Some(primary);
            return Ok(false);
        };
        let (cx, status) = hit_status(generation, &object, &primary);
        ctx.cache = Some(Box::new(cx));
        let header = hit_header(&object, now, generation, &ctx.request_id, status)?;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(header, head).await?;
        if !head {
            session
                .write_response_body(Some(object.body().clone()), true)
                .await?;
        }
        Ok(true)
    }
}
