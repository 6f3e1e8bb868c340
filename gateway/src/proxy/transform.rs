//! Routes with a response-body filter: the whole-body transform path.
//!
//! Pingora streams a response: its head goes to the client (and to the
//! cache) before the body arrives, and its body hooks are synchronous. A
//! whole-body transform needs the opposite: the full body first, an async
//! call into the guest (under its CPU deadline, yielding to other requests),
//! and only then a head, since the transform decides status, type and
//! length. So on such routes `proxy_upstream_filter` — the point where
//! Pingora would connect upstream after a cache miss — fetches the origin's
//! response itself (same upstream group and backend choice, the same
//! forwarding headers), buffers it up to the filters' limit, runs the
//! response-head and then the body filters, admits the result to the cache
//! through pingora-cache's own miss handler (so the *transformed* variant is
//! what is stored, under the key the request filters shaped, with the cache
//! lock released to waiting requests as usual), and answers the client.
//! Cache hits never come here: they are served like any other hit.
//!
//! Only `GET` and `HEAD` take this path; other methods are proxied as they
//! are. Limits: ranges and client conditional requests are answered in full
//! on a miss (hits honour them), and stale-if-error does not cover the
//! fetch.

use super::{respond, EdgeProxy, Refusal, RequestCtx};
use crate::filter_host::apply;
use bytes::Bytes;
use pingora::cache::{CachePhase, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// One pooled client per (SNI, backend) for TLS backends (the SNI must be
/// the URL host, so the address is pinned by `resolve`), one for plain ones.
fn client(tls: Option<(&str, SocketAddr)>) -> reqwest::Client {
    type Clients = HashMap<Option<(String, SocketAddr)>, reqwest::Client>;
    static CLIENTS: OnceLock<Mutex<Clients>> = OnceLock::new();
    let key = tls.map(|(sni, addr)| (sni.to_string(), addr));
    let mut map = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(key)
        .or_insert_with(|| {
            let mut b = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .tcp_nodelay(true)
                .pool_idle_timeout(std::time::Duration::from_secs(60));
            if let Some((sni, addr)) = tls {
                b = b.resolve(sni, addr);
            }
            b.build().unwrap_or_default()
        })
        .clone()
}

fn upstream_error(kind: ErrorType, e: impl std::fmt::Display) -> Box<Error> {
    Error::create(
        kind,
        ErrorSource::Upstream,
        Some(e.to_string().into()),
        None,
    )
}

/// Serves a `GET`/`HEAD` on a route with body filters. `Ok(())` means the
/// response was written.
pub(super) async fn serve(
    proxy: &EdgeProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let generation = Arc::clone(&ctx.generation);
    let route_id = ctx
        .route
        .ok_or_else(|| Error::explain(InternalError, "no route matched"))?;
    let route = generation
        .config
        .routes
        .get(route_id)
        .ok_or_else(|| Error::explain(InternalError, "no route matched"))?;
    let chain = &generation.route_filters[route_id];
    let group = Arc::clone(&generation.route_upstreams[route_id]);
    let head_only = session.req_header().method == http::Method::HEAD;

    // The request as Pingora would send it upstream: whole objects (no
    // ranges, no client preconditions), forwarding headers, Host.
    let mut base = session.req_header().clone();
    pingora::cache::filters::upstream::request_filter(&mut base, None);
    let response = loop {
        let Some(i) = group.select(&ctx.tried) else {
            return Err(upstream_error(
                ConnectNoRoute,
                "every backend of the upstream group was tried",
            ));
        };
        ctx.tried.push(i);
        ctx.backend = Some(i);
        ctx.attempts += 1;
        let mut up = base.clone();
        proxy.upstream_request_filter(session, &mut up, ctx).await?;
        let backend = &group.backends()[i];
        let path = up.uri.path_and_query().map_or("/", |p| p.as_str());
        let (url, http) = match &group.config.tls_sni {
            Some(sni) => (
                format!("https://{sni}:{}{path}", backend.addr.port()),
                client(Some((sni, backend.addr))),
            ),
            None => (format!("http://{}{path}", backend.addr), client(None)),
        };
        let mut rb = http
            .request(up.method.clone(), url)
            .timeout(route.timeouts.connect + route.timeouts.read);
        for (name, value) in up.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                rb = rb.header(name, value);
            }
        }
        match rb.send().await {
            Ok(r) => {
                group.report_connect_success(i);
                break r;
            }
            Err(e) if e.is_connect() => {
                group.report_connect_failure(i);
                let budget = route.retries.max(1) as usize;
                if ctx.tried.len() < group.backends().len() && ctx.tried.len() <= budget {
                    continue;
                }
                return Err(upstream_error(ConnectRefused, e));
            }
            Err(e) if e.is_timeout() => return Err(upstream_error(ReadTimedout, e)),
            Err(e) => return Err(upstream_error(ReadError, e)),
        }
    };

    let status = response.status().as_u16();
    if let Some(cx) = ctx.cache.as_deref_mut() {
        cx.fwd_status = Some(status);
    }
    let mut head = ResponseHeader::build(status, Some(response.headers().len() + 4))?;
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    let limit = chain.body_limit();
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return refuse_too_large(session, ctx).await;
    }
    let mut body = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return refuse_too_large(session, ctx).await;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err(upstream_error(ReadTimedout, e)),
            Err(e) => return Err(upstream_error(ReadError, e)),
        }
    }
    let mut body = Bytes::from(body);

    // Filters: response heads first, then the body transforms.
    if let Some(facts) = ctx.facts.as_ref() {
        let req = session.req_header();
        let failed = if chain.has_response_phase() {
            apply::run_response_phase(
                chain,
                facts,
                req,
                &ctx.authority,
                &mut head,
                &proxy.shared.metrics,
            )
            .await
            .is_err()
        } else {
            false
        };
        let failed = failed
            || apply::run_body_phase(
                chain,
                facts,
                req,
                &ctx.authority,
                &mut head,
                &mut body,
                &proxy.shared.metrics,
            )
            .await
            .is_err();
        if failed {
            ctx.refusal = Some(Refusal::FilterFailed);
            return Err(Error::explain(
                HTTPStatus(503),
                "a fail-closed response filter failed",
            ));
        }
    }

    // The transformed response is what the cache stores.
    if session.cache.enabled()
        && matches!(session.cache.phase(), CachePhase::Miss | CachePhase::Stale)
    {
        match proxy.response_cache_filter(session, &head, ctx)? {
            RespCacheable::Cacheable(meta) => {
                let variance = proxy.cache_vary_filter(&meta, ctx, session.req_header());
                session.cache.set_cache_meta(meta);
                session.cache.update_variance(variance);
                session.cache.set_miss_handler().await?;
                if let Some(fill) = session.cache.miss_handler() {
                    fill.write_body(body.clone(), true).await?;
                }
                session.cache.finish_miss_handler().await?;
            }
            RespCacheable::Uncacheable(reason) => {
                session.cache.response_became_uncacheable(reason);
                session.cache.disable(reason);
            }
        }
    }

    proxy.response_filter(session, &mut head, ctx).await?;
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

async fn refuse_too_large(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let refusal = Refusal::TransformTooLarge;
    ctx.refusal = Some(refusal);
    let (status, body) = refusal.response();
    let id_header = ctx.generation.hot.request_id_header.clone();
    respond(session, status, body, &ctx.request_id, &id_header, false).await
}
