//! Running a route's filter chain on Pingora's request and response heads,
//! and applying the decisions.

use super::bindings::types as wit;
use super::{FailureKind, FilterChain, FilterFailure, LoadedFilter, Phases, RequestFacts};
use crate::metrics::Metrics;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// Framing and hop-by-hop headers belong to the host; a filter editing them
/// gives a bad answer (they would desynchronise message framing).
fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    )
}

fn parse_name(name: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name `{name}`"))?;
    if reserved(&n) {
        return Err(format!("header `{name}` is managed by the gateway"));
    }
    Ok(n)
}

fn parse_value(v: &[u8]) -> Result<HeaderValue, String> {
    HeaderValue::from_bytes(v).map_err(|_| "invalid header value".to_string())
}

/// The pseudo-fields, then `headers`, as a `field-map`
/// (`filters/wit/filter.wit`): a count, a `(name-len, value-len)` index,
/// then the bytes. One buffer per
/// head means one guest allocation and one copy per filter call, however
/// many headers the request has; as a list of header records it was two
/// allocations per header per filter, each a call into the guest (~80 ns).
fn field_map(pseudo: &[(&str, &str)], headers: &http::HeaderMap) -> Vec<u8> {
    let fields = || {
        pseudo
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .chain(
                headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            )
    };
    let n = pseudo.len() + headers.len();
    let bytes: usize = fields().map(|(k, v)| k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + 8 * n + bytes);
    // Pingora bounds a head far below 4 GiB, so every length fits a u32.
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in fields() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in fields() {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// The WIT view of a request head: the pseudo-fields `:method`, `:path`
/// and `:authority`, then the headers.
fn request_head(req: &RequestHeader, authority: &str) -> wit::RequestHead {
    let path = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path(), |p| p.as_str());
    let pseudo = [
        (":method", req.method.as_str()),
        (":path", path),
        (":authority", authority),
    ];
    wit::RequestHead {
        fields: field_map(&pseudo, &req.headers),
    }
}

fn response_head(resp: &ResponseHeader) -> wit::ResponseHead {
    wit::ResponseHead {
        status: resp.status.as_u16(),
        fields: field_map(&[], &resp.headers),
    }
}

/// Header edits against any Pingora header type.
trait Headers {
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
}

impl Headers for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.insert_header(name, value)
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

impl Headers for ResponseHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.insert_header(name, value)
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
        self.append_header(name, value).map(|_| ())
    }
}

fn apply_headers(target: &mut impl Headers, edits: &wit::HeaderEdits) -> Result<(), String> {
    for name in &edits.remove {
        target.remove(&parse_name(name)?);
    }
    for h in &edits.set {
        target
            .set(parse_name(&h.name)?, parse_value(&h.value)?)
            .map_err(|e| e.to_string())?;
    }
    for h in &edits.append {
        target
            .append(parse_name(&h.name)?, parse_value(&h.value)?)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn apply_request_edits(
    req: &mut RequestHeader,
    edits: &wit::RequestEdits,
    facts: &mut RequestFacts,
) -> Result<(), String> {
    apply_headers(req, &edits.headers)?;
    if let Some(path) = &edits.rewrite_path {
        if !path.starts_with('/') {
            return Err(format!("rewrite-path must start with `/`, got `{path}`"));
        }
        let uri: http::Uri = path
            .parse()
            .map_err(|_| format!("invalid rewrite-path `{path}`"))?;
        req.set_uri(uri);
    }
    if let Some(p) = &edits.principal {
        facts.principal = Some(p.clone());
    }
    facts.labels.extend(edits.labels.iter().cloned());
    if !edits.cache_key.is_empty() {
        let parts = facts.cache_key.len() + edits.cache_key.len();
        let bytes: usize = facts
            .cache_key
            .iter()
            .chain(&edits.cache_key)
            .map(String::len)
            .sum();
        if parts > MAX_CACHE_KEY_PARTS || bytes > MAX_CACHE_KEY_BYTES {
            return Err(format!(
                "cache-key parts over the limit ({parts} parts, {bytes} bytes; at most {MAX_CACHE_KEY_PARTS} and {MAX_CACHE_KEY_BYTES})"
            ));
        }
        facts.cache_key.extend(edits.cache_key.iter().cloned());
    }
    Ok(())
}

/// Most cache-key parts the filters of one request may add.
const MAX_CACHE_KEY_PARTS: usize = 16;
/// Most cache-key bytes the filters of one request may add.
const MAX_CACHE_KEY_BYTES: usize = 1024;

/// A response a filter answered with.
pub struct FilterResponse {
    /// Status.
    pub status: u16,
    /// Headers (validated).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Vec<u8>,
}

fn validate_response(r: wit::Response) -> Result<FilterResponse, String> {
    if !(100..=599).contains(&r.status) {
        return Err(format!("status {} is not an HTTP status", r.status));
    }
    let headers = r
        .headers
        .iter()
        .map(|h| Ok((parse_name(&h.name)?, parse_value(&h.value)?)))
        .collect::<Result<_, String>>()?;
    Ok(FilterResponse {
        status: r.status,
        headers,
        body: r.body,
    })
}

/// How the request phase ended.
pub enum RequestPhase {
    /// Go on to the upstream.
    Continue,
    /// A filter answered.
    Respond(FilterResponse),
}

fn failed(filter: &LoadedFilter, metrics: &Metrics, f: &FilterFailure) {
    filter.metrics(metrics).error(f.kind).inc();
    tracing::warn!(route = %filter_route(filter), filter = %f.filter, kind = f.kind.as_str(), detail = %f.detail, "filter failed");
}

fn filter_route(filter: &LoadedFilter) -> &str {
    &filter.route
}

/// Runs the chain's request phase, editing `req` and `facts` as filters ask.
/// `Err` when a fail-closed filter failed.
///
/// The facts are shared with each call, not copied: a call's store lets go
/// of them before the call returns (an instance is recycled with idle
/// facts, or dropped), so an edit after it changes them in place.
pub async fn run_request_phase(
    chain: &FilterChain,
    facts: &mut Arc<RequestFacts>,
    req: &mut RequestHeader,
    authority: &str,
    metrics: &Metrics,
) -> Result<RequestPhase, FilterFailure> {
    // The request as guests see it: rebuilt only when an edit changed it
    // and another filter is about to look.
    let mut head = request_head(req, authority);
    let mut edited = false;
    for filter in chain
        .filters
        .iter()
        .filter(|f| f.phases.contains(Phases::REQUEST_HEAD))
    {
        if edited {
            head = request_head(req, authority);
            edited = false;
        }
        let result = filter.on_request(Arc::clone(facts), &head, metrics).await;
        let m = filter.metrics(metrics);
        let outcome = result.and_then(|decision| match decision {
            wit::RequestDecision::Continue => {
                m.decisions[0].inc();
                Ok(None)
            }
            wit::RequestDecision::Edit(edits) => {
                m.decisions[1].inc();
                let h = &edits.headers;
                let changes_head =
                    !(h.remove.is_empty() && h.set.is_empty() && h.append.is_empty())
                        || edits.rewrite_path.is_some();
                let applied = apply_request_edits(req, &edits, Arc::make_mut(facts))
                    .map(|_| None)
                    .map_err(|detail| bad_answer(&filter.spec.name, detail));
                edited |= changes_head;
                applied
            }
            wit::RequestDecision::Respond(r) => {
                m.decisions[2].inc();
                validate_response(r)
                    .map(Some)
                    .map_err(|detail| bad_answer(&filter.spec.name, detail))
            }
        });
        match outcome {
            Ok(None) => {}
            Ok(Some(response)) => return Ok(RequestPhase::Respond(response)),
            Err(failure) => {
                failed(filter, metrics, &failure);
                if filter.fails_closed() {
                    return Err(failure);
                }
            }
        }
    }
    Ok(RequestPhase::Continue)
}

fn bad_answer(filter: &str, detail: String) -> FilterFailure {
    FilterFailure {
        filter: filter.to_string(),
        kind: FailureKind::BadAnswer,
        detail,
    }
}

/// Runs the chain's response phase (reverse order) on `resp`.
pub async fn run_response_phase(
    chain: &FilterChain,
    facts: &Arc<RequestFacts>,
    req: &RequestHeader,
    authority: &str,
    resp: &mut ResponseHeader,
    metrics: &Metrics,
) -> Result<(), FilterFailure> {
    let request = &request_head(req, authority);
    for filter in chain
        .filters
        .iter()
        .rev()
        .filter(|f| f.phases.contains(Phases::RESPONSE_HEAD))
    {
        let head = response_head(resp);
        let result = filter
            .on_response(Arc::clone(facts), request, &head, metrics)
            .await;
        let m = filter.metrics(metrics);
        let outcome = result.and_then(|decision| match decision {
            wit::ResponseDecision::Continue => {
                m.decisions[0].inc();
                Ok(())
            }
            wit::ResponseDecision::Edit(edits) => {
                m.decisions[1].inc();
                let mut apply = || {
                    if let Some(status) = edits.status {
                        resp.set_status(status)
                            .map_err(|_| format!("invalid status {status}"))?;
                    }
                    apply_headers(resp, &edits.headers)
                };
                apply().map_err(|detail| bad_answer(&filter.spec.name, detail))
            }
        });
        settle(filter, metrics, outcome)?;
    }
    Ok(())
}

/// Counts a failed call; the failure ends the phase only when the filter
/// fails closed (a fail-open filter is skipped).
fn settle(
    filter: &LoadedFilter,
    metrics: &Metrics,
    outcome: Result<(), FilterFailure>,
) -> Result<(), FilterFailure> {
    if let Err(failure) = outcome {
        failed(filter, metrics, &failure);
        if filter.fails_closed() {
            return Err(failure);
        }
    }
    Ok(())
}

/// Runs the body filters (reverse route order) on a whole response. Each
/// may replace the body and edit the head; `content-length` is set to the
/// final body's length. A fail-open filter that fails is skipped.
pub async fn run_body_phase(
    chain: &FilterChain,
    facts: &Arc<RequestFacts>,
    req: &RequestHeader,
    authority: &str,
    resp: &mut ResponseHeader,
    body: &mut bytes::Bytes,
    metrics: &Metrics,
) -> Result<(), FilterFailure> {
    let request = &request_head(req, authority);
    for filter in chain
        .filters
        .iter()
        .rev()
        .filter(|f| f.phases.contains(Phases::RESPONSE_BODY))
    {
        let head = response_head(resp);
        let result = filter
            .on_response_body(Arc::clone(facts), request, &head, body, metrics)
            .await;
        let m = filter.metrics(metrics);
        let outcome = result.and_then(|decision| match decision {
            wit::BodyDecision::Continue => {
                m.decisions[0].inc();
                Ok(())
            }
            wit::BodyDecision::Replace(r) => {
                m.decisions[1].inc();
                let apply = || {
                    if let Some(status) = r.status {
                        if !(200..=599).contains(&status) {
                            return Err(format!("status {status} cannot carry a body"));
                        }
                        resp.set_status(status)
                            .map_err(|_| format!("invalid status {status}"))?;
                    }
                    apply_headers(resp, &r.headers)?;
                    *body = bytes::Bytes::from(r.body);
                    Ok(())
                };
                apply().map_err(|detail| bad_answer(&filter.spec.name, detail))
            }
        });
        settle(filter, metrics, outcome)?;
    }
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
        .map_err(|e| FilterFailure {
            filter: String::new(),
            kind: FailureKind::BadAnswer,
            detail: e.to_string(),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(cache_key: Vec<String>) -> wit::RequestEdits {
        wit::RequestEdits {
            headers: wit::HeaderEdits {
                remove: Vec::new(),
                set: Vec::new(),
                append: Vec::new(),
            },
            rewrite_path: None,
            principal: None,
            labels: Vec::new(),
            cache_key,
        }
    }

    #[test]
    fn cache_key_parts_accumulate_within_limits() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut facts = RequestFacts::default();
        apply_request_edits(&mut req, &edits(vec!["a".into()]), &mut facts).unwrap();
        apply_request_edits(&mut req, &edits(vec!["b".into(), "c".into()]), &mut facts).unwrap();
        assert_eq!(facts.cache_key, ["a", "b", "c"]);
        let many = (0..MAX_CACHE_KEY_PARTS).map(|i| i.to_string()).collect();
        let err = apply_request_edits(&mut req, &edits(many), &mut facts).unwrap_err();
        assert!(err.contains("cache-key parts over the limit"), "{err}");
        let long = vec!["x".repeat(MAX_CACHE_KEY_BYTES)];
        let mut fresh = RequestFacts::default();
        apply_request_edits(&mut req, &edits(long), &mut fresh).unwrap();
        assert!(apply_request_edits(&mut req, &edits(vec!["y".into()]), &mut fresh).is_err());
    }

    /// Reads a `field-map` back, by the contract's text rather than by
    /// `field_map`'s code.
    fn decode(map: &[u8]) -> Vec<(String, Vec<u8>)> {
        let u32_at = |i: usize| u32::from_le_bytes(map[i..i + 4].try_into().unwrap()) as usize;
        let n = u32_at(0);
        let mut at = 4 + 8 * n;
        let fields = (0..n)
            .map(|i| {
                let (k, v) = (u32_at(4 + 8 * i), u32_at(8 + 8 * i));
                let name = String::from_utf8(map[at..at + k].to_vec()).unwrap();
                let value = map[at + k..at + k + v].to_vec();
                at += k + v;
                (name, value)
            })
            .collect();
        assert_eq!(at, map.len(), "no bytes after the last field");
        fields
    }

    #[test]
    fn heads_reach_guests_as_field_maps() {
        let mut req = RequestHeader::build("POST", b"/a/b?x=1", None).unwrap();
        req.insert_header("Host", "example.com:8443").unwrap();
        req.append_header("x-two", "1").unwrap();
        req.append_header("x-two", HeaderValue::from_bytes(b"\xff2").unwrap())
            .unwrap();
        req.insert_header("empty", "").unwrap();
        let got = decode(&request_head(&req, "example.com").fields);
        let want: Vec<(String, Vec<u8>)> = [
            (":method", &b"POST"[..]),
            (":path", b"/a/b?x=1"),
            (":authority", b"example.com"),
            ("host", b"example.com:8443"),
            ("x-two", b"1"),
            ("x-two", b"\xff2"),
            ("empty", b""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
        assert_eq!(got, want);

        let mut resp = ResponseHeader::build(404, None).unwrap();
        resp.insert_header("content-type", "text/plain").unwrap();
        let head = response_head(&resp);
        assert_eq!(head.status, 404);
        assert_eq!(
            decode(&head.fields),
            [("content-type".to_string(), b"text/plain".to_vec())]
        );
        assert_eq!(
            decode(&response_head(&ResponseHeader::build(204, None).unwrap()).fields),
            []
        );
    }
}
