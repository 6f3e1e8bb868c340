//! `edgegate filter test`: runs a filter chain on one request, locally, with
//! the production host: the same engine, limits, imports, key sets and
//! rate-limit buckets as the gateway, no network.

use super::apply::{self, RequestPhase};
use super::{FilterChain, FilterSet, RequestFacts};
use crate::metrics::{filter_mean, Metrics};
use pingora::http::{RequestHeader, ResponseHeader};
use policies::Config;
use std::fmt::Write as _;

/// What the chain did with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request would go upstream (possibly edited).
    Continue,
    /// A filter answered with this status.
    Respond(u16),
    /// A fail-closed filter failed: the client would get 503.
    Failed(String),
}

/// The outcome of a local run, printable for a person.
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// A human-readable account.
    pub text: String,
}

/// Parses a raw HTTP/1.1 request head (`GET /x HTTP/1.1`, headers, blank line).
pub fn parse_request(raw: &str) -> Result<RequestHeader, String> {
    let mut lines = raw.lines();
    let first = lines.next().ok_or("the request file is empty")?;
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("not a request line: `{first}`"));
    };
    let mut req =
        RequestHeader::build(method, target.as_bytes(), None).map_err(|e| e.to_string())?;
    for line in lines {
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: `{line}`"))?;
        req.append_header(name.trim().to_string(), value.trim())
            .map_err(|e| format!("header `{name}`: {e}"))?;
    }
    Ok(req)
}

fn dump_request(out: &mut String, req: &RequestHeader) {
    let _ = writeln!(out, "  {} {}", req.method, req.uri);
    for (k, v) in req.headers.iter() {
        let _ = writeln!(out, "  {k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
}

/// Runs route `route_name` of `config` on `req`, then (if the request went
/// through) its response phase on a `200 OK` with no headers.
pub async fn run(
    config: &Config,
    route_name: &str,
    mut req: RequestHeader,
) -> Result<Report, String> {
    let route_id = config
        .routes
        .routes()
        .iter()
        .position(|r| r.name == route_name)
        .ok_or_else(|| format!("no route named `{route_name}`"))?;
    let route = &config.routes.routes()[route_id];
    let set = FilterSet::new(config, None).map_err(|e| e.to_string())?;
    let chain = set.chain(route, config).map_err(|e| e.to_string())?;
    let metrics = Metrics::new().map_err(|e| e.to_string())?;
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let authority = policies::route::normalize_host(&host).into_owned();
    let mut facts = std::sync::Arc::new(RequestFacts {
        client_ip: "127.0.0.1".into(),
        tls_sni: None,
        route: route.name.clone(),
        pop: config.pop_name.clone(),
        request_id: "local-test".into(),
        principal: None,
        labels: Vec::new(),
        cache_key: Vec::new(),
    });
    let mut text = String::new();
    let _ = writeln!(
        text,
        "route `{}`: {} filter(s): {}",
        route.name,
        chain.filters.len(),
        chain
            .filters
            .iter()
            .map(|f| format!("{} ({:?})", f.spec.name, f.phases))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = std::time::Instant::now();
    let outcome =
        apply::run_request_phase(&chain, &mut facts, &mut req, &authority, &metrics).await;
    let _ = writeln!(text, "request phase: {:?}", started.elapsed());
    let verdict = match outcome {
        Err(failure) => {
            let _ = writeln!(
                text,
                "FAILED: filter `{}`: {} ({})\nthe client would get 503",
                failure.filter,
                failure.kind.as_str(),
                failure.detail.lines().next().unwrap_or_default()
            );
            Verdict::Failed(failure.kind.as_str().to_string())
        }
        Ok(RequestPhase::Respond(answer)) => {
            let _ = writeln!(text, "responded: {}", answer.status);
            for (k, v) in &answer.headers {
                let _ = writeln!(text, "  {k}: {}", String::from_utf8_lossy(v.as_bytes()));
            }
            let _ = writeln!(text, "\n{}", String::from_utf8_lossy(&answer.body));
            Verdict::Respond(answer.status)
        }
        Ok(RequestPhase::Continue) => {
            let _ = writeln!(text, "continue: the request sent upstream would be");
            dump_request(&mut text, &req);
            if let Some(p) = &facts.principal {
                let _ = writeln!(text, "principal: {p}");
            }
            for (k, v) in &facts.labels {
                let _ = writeln!(text, "label: {k}={v}");
            }
            for part in &facts.cache_key {
                let _ = writeln!(text, "cache-key part: {part}");
            }
            if chain.has_response_phase() {
                let mut resp = ResponseHeader::build(200, None).map_err(|e| e.to_string())?;
                match apply::run_response_phase(
                    &chain, &facts, &req, &authority, &mut resp, &metrics,
                )
                .await
                {
                    Ok(()) => {
                        let _ = writeln!(text, "response phase on `200 OK`: {}", resp.status);
                        for (k, v) in resp.headers.iter() {
                            let _ =
                                writeln!(text, "  {k}: {}", String::from_utf8_lossy(v.as_bytes()));
                        }
                    }
                    Err(f) => {
                        let _ = writeln!(
                            text,
                            "response phase FAILED: filter `{}`: {}",
                            f.filter,
                            f.kind.as_str()
                        );
                        return Ok(Report {
                            verdict: Verdict::Failed(f.kind.as_str().to_string()),
                            text,
                        });
                    }
                }
            }
            Verdict::Continue
        }
    };
    memory_report(&mut text, &chain, &route.name, &metrics);
    Ok(Report { verdict, text })
}

/// What each filter's calls grew their linear memory to. A call that grows
/// past the initial memory costs a pooled-memory resize on every request in
/// production, so it is worth a tenant's attention before it ships.
fn memory_report(text: &mut String, chain: &FilterChain, route: &str, metrics: &Metrics) {
    for f in &chain.filters {
        let Some(peak) = filter_mean(&metrics.filter_memory_peak, &f.spec.name) else {
            continue;
        };
        let count = metrics
            .filter_memory_peak
            .with_label_values(&[f.spec.name.as_str()])
            .get_sample_count();
        let _ = writeln!(
            text,
            "memory: `{}` used {:.0} KiB of linear memory per call (mean of {count} call(s))",
            f.spec.name,
            peak / 1024.0
        );
        let grew = metrics
            .filter_memory_grows
            .with_label_values(&[route, f.spec.name.as_str()])
            .get();
        if grew > 0 {
            let _ = writeln!(
                text,
                "  it grew past its initial memory in {grew} call(s): in production each such \
                 call also pays for resizing a pooled memory (~9 µs); keep the heap within \
                 the initial memory (see the SDK docs)"
            );
        }
    }
}
