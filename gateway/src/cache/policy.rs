//! Whether a response may be stored, and for how long (RFC 9111 for a
//! shared cache), on top of pingora-cache's `Cache-Control` parsing.
//!
//! pingora-cache's `resp_cacheable` already handles `no-store`, `private`,
//! `no-cache` (stored, always revalidated), `s-maxage` over `max-age` over
//! `Expires`, `Authorization` (stored only with `public`, `s-maxage` or
//! `must-revalidate`), and refuses stale serving under `must-revalidate`,
//! `proxy-revalidate` and `s-maxage`. What this adds:
//!
//! - `Vary: *` is never stored; `Set-Cookie` only where the route allows it;
//!   a request's own `no-store` is honoured; `206` is never stored (the
//!   cache fetches whole objects and serves ranges itself).
//! - Freshness is reduced by the response's age when it arrives (the larger
//!   of its `Age` and the time since its `Date`), and that age is carried so
//!   the `Age` served from cache counts it too (RFC 9111 §4.2.3).
//! - Heuristic freshness (no explicit lifetime) only for heuristically
//!   cacheable statuses or `public` (§4.2.2): 10% of the time since
//!   `Last-Modified`, at most a day; otherwise the route's `default_ttl`
//!   when set; otherwise not stored.
//! - The route's stale grace applies only when the origin sent no
//!   `stale-while-revalidate`/`stale-if-error` and did not forbid stale
//!   serving (`no-cache` forbids it too: such responses must revalidate).

use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::resp_cacheable;
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use policies::CachePolicy;
use std::time::{Duration, SystemTime};

/// Statuses RFC 9110 §15.1 defines as heuristically cacheable (less 206).
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The longest heuristic lifetime.
const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);

fn storable_status(status: u16) -> bool {
    match status {
        206 | 304 => false,
        s if s < 200 => false,
        501 => true,
        s => s < 500,
    }
}

fn no_lifetime(_: http::StatusCode) -> Option<Duration> {
    None
}

fn header_time(resp: &ResponseHeader, name: http::HeaderName) -> Option<SystemTime> {
    let v = resp.headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok()
}

/// The response's age on arrival: max(`Age`, now − `Date`).
fn arrival_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let age = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = header_time(resp, http::header::DATE)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    age.max(apparent)
}

/// Decides whether `resp` (to `req`) is stored on a route with `policy`.
pub fn decide(policy: &CachePolicy, req: &RequestHeader, resp: &ResponseHeader) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    if !storable_status(status) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    if super::key::vary_names(&resp.headers).is_none() {
        return Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    if !policy.allow_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    if CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store()) {
        return Uncacheable(NoCacheReason::Custom("request-no-store"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    let authorization = req.headers.contains_key(http::header::AUTHORIZATION);
    let forbids_stale = cc.as_ref().is_some_and(|cc| {
        cc.no_cache()
            || cc.must_revalidate()
            || cc.proxy_revalidate()
            || cc.s_maxage().ok().flatten().is_some()
    });
    let (swr, sie) = if forbids_stale {
        (0, 0)
    } else {
        (
            policy.stale_while_revalidate.as_secs() as u32,
            policy.stale_if_error.as_secs() as u32,
        )
    };
    let defaults = CacheMetaDefaults::new(no_lifetime, swr, sie);
    let explicit = cc.as_ref().and_then(|cc| cc.fresh_duration()).is_some()
        || resp.headers.contains_key(http::header::EXPIRES);
    let now = SystemTime::now();
    let age = arrival_age(resp, now);
    match resp_cacheable(cc.as_ref(), resp.clone(), authorization, &defaults) {
        RespCacheable::Cacheable(mut meta) => {
            if let Some(cc) = &cc {
                if cc.no_cache() {
                    meta.disable_serve_stale();
                }
            }
            // Expires is a point in time; a max-age lifetime runs from when
            // the response was generated, not from when it reached us.
            if !age.is_zero() && cc.as_ref().and_then(|c| c.fresh_duration()).is_some() {
                let fresh_until = meta.fresh_until().checked_sub(age).unwrap_or(now);
                meta.update_freshness(
                    fresh_until,
                    meta.stale_while_revalidate_sec(),
                    meta.stale_if_error_sec(),
                );
                meta.set_epoch_override(now.checked_sub(age).unwrap_or(now));
            }
            RespCacheable::Cacheable(meta)
        }
        Uncacheable(reason) => {
            let refused = cc.as_ref().is_some_and(|c| {
                c.no_store() || c.private() || (authorization && !c.allow_caching_authorized_req())
            });
            if explicit || refused || (authorization && cc.is_none()) {
                return Uncacheable(reason);
            }
            let public = cc.as_ref().is_some_and(|c| c.public());
            if !(public || HEURISTIC.contains(&status)) {
                return Uncacheable(reason);
            }
            let lifetime = match header_time(resp, http::header::LAST_MODIFIED) {
                Some(lm) => {
                    let since = header_time(resp, http::header::DATE)
                        .unwrap_or(now)
                        .duration_since(lm)
                        .unwrap_or_default();
                    Some((since / 10).min(MAX_HEURISTIC))
                }
                None => None,
            }
            .filter(|d| !d.is_zero())
            .or(policy.default_ttl);
            let Some(lifetime) = lifetime else {
                return Uncacheable(reason);
            };
            let mut header = resp.clone();
            if let Some(cc) = &cc {
                cc.strip_private_headers(&mut header);
            }
            RespCacheable::Cacheable(CacheMeta::new(now + lifetime, now, swr, sie, header))
        }
    }
}
