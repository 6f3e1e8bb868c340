//! The response cache: each RFC 9111 rule shown by origin hit counts and
//! response headers, against a scripted in-process origin.

use crate::harness::{client, simple_config, Gateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted origin answers on one path.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Send the body chunked (no `Content-Length`).
    pub chunked: bool,
}

impl Reply {
    pub fn ok(cache_control: &str, body: &str) -> Reply {
        let mut r = Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            chunked: false,
        };
        if !cache_control.is_empty() {
            r = r.header("cache-control", cache_control);
        }
        r
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Script {
    replies: Mutex<HashMap<String, Reply>>,
    hits: Mutex<HashMap<String, usize>>,
    /// Request headers of every request, in order, by path.
    seen: Mutex<Vec<(String, http::HeaderMap)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// An origin whose answers the test sets per path (and query).
pub struct Scripted {
    pub addr: SocketAddr,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub async fn start() -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Script::default());
        let s = script.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(req, &s).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Scripted { addr, script, task }
    }

    /// Sets the answer for `path` (with its query, if any).
    pub fn set(&self, path: &str, reply: Reply) {
        self.script
            .replies
            .lock()
            .unwrap()
            .insert(path.into(), reply);
    }

    /// Requests seen for `path` (with its query, if any).
    pub fn hits(&self, path: &str) -> usize {
        self.script
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Headers of the last request for `path`.
    pub fn last_headers(&self, path: &str) -> http::HeaderMap {
        self.script
            .seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .expect("origin saw the path")
    }

    pub fn max_in_flight(&self) -> usize {
        self.script.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn answer(req: Request<hyper::body::Incoming>, s: &Script) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    *s.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    s.seen
        .lock()
        .unwrap()
        .push((path.clone(), req.headers().clone()));
    let reply = {
        let replies = s.replies.lock().unwrap();
        replies
            .get(&path)
            .or_else(|| replies.get(req.uri().path()))
            .cloned()
    }
    .unwrap_or_else(|| Reply {
        status: 404,
        ..Reply::ok("", "no script")
    });
    tokio::time::sleep(reply.delay).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let inm = req
        .headers()
        .get("if-none-match")
        .map(|v| v.to_str().unwrap());
    let ims = req
        .headers()
        .get("if-modified-since")
        .map(|v| v.to_str().unwrap());
    let not_modified = (inm.is_some() && inm == reply.get("etag"))
        || (inm.is_none() && ims.is_some() && ims == reply.get("last-modified"));
    let mut b = Response::builder().status(if not_modified { 304 } else { reply.status });
    for (n, v) in &reply.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    let body: Body = if not_modified {
        Full::new(Bytes::new()).boxed()
    } else if reply.chunked {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = reply
            .body
            .chunks(1024)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(chunks)).boxed()
    } else {
        Full::new(Bytes::from(reply.body)).boxed()
    };
    b.body(body).unwrap()
}

const CACHE: &str = "[routes.cache]\n";

async fn gateway(origin: &Scripted, route_cache: &str, extra_top: &str) -> Gateway {
    let cfg = format!("{}\n{route_cache}", simple_config(&[origin.addr], ""),);
    Gateway::start(&format!("{extra_top}\n{cfg}")).await
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn get_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Got {
    send(gw, reqwest::Method::GET, path, headers).await
}

async fn get(gw: &Gateway, path: &str) -> Got {
    get_with(gw, path, &[]).await
}

async fn send(gw: &Gateway, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut rb = client().request(method, gw.url(path));
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    Got {
        status,
        headers,
        body,
    }
}

pub async fn purge(gw: &Gateway, query: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut rb = client().post(gw.admin_url(&format!("/admin/purge?{query}")));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn fresh_responses_are_served_from_cache_with_age_and_cache_status() {
    let origin = Scripted::start().await;
    origin.set("/a", Reply::ok("max-age=60", "alpha"));
    let gw = gateway(&origin, CACHE, "").await;
    let first = get(&gw, "/a").await;
    assert_eq!(first.body, "alpha");
    assert_eq!(
        first.cache_status(),
        "test-pop; fwd=uri-miss; fwd-status=200; stored"
    );
    let second = get(&gw, "/a").await;
    assert_eq!(second.body, "alpha");
    assert!(
        second.cache_status().starts_with("test-pop; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert!(second.header("age").is_some(), "Age on a cached response");
    assert_eq!(origin.hits("/a"), 1);
    // Per-request headers are not cached.
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"edgegate_cache_requests_total{result="hit",route="all"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"edgegate_cache_requests_total{result="miss",route="all"} 1"#));
    assert!(m.contains("edgegate_cache_objects 1"), "{m}");
    let status = gw.status().await;
    assert_eq!(status["cache"]["objects"], 1, "{status}");
    assert_eq!(status["cache"]["capacity_bytes"], 256 << 20);
    assert_eq!(status["cache"]["routes"][0], "all");
}

/// Plain fresh hits are answered before pingora-cache runs
/// (`proxy::fresh`). They must be the response pingora-cache gives for the
/// same hit, and every other kind of request must still reach it.
#[tokio::test]
async fn plain_fresh_hits_skip_pingora_cache_and_answer_as_it_would() {
    let origin = Scripted::start().await;
    origin.set(
        "/p",
        Reply::ok("max-age=60", "plain")
            .header("etag", "\"v1\"")
            .header("surrogate-key", "t1")
            .header("x-origin", "kept")
            .header("age", "3"),
    );
    origin.set(
        "/v",
        Reply::ok("max-age=60", "varied").header("vary", "accept-language"),
    );
    let gw = gateway(&origin, CACHE, "").await;
    let lookups = || {
        gw.shared
            .cache
            .store
            .counters()
            .lookups
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    get(&gw, "/p").await;
    let before = lookups();
    let fast = get(&gw, "/p").await;
    assert_eq!(
        lookups(),
        before,
        "a plain fresh hit never reaches pingora-cache"
    );
    // A validator that does not match: pingora-cache serves the same hit in full.
    let slow = get_with(&gw, "/p", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(lookups(), before + 1);
    assert_eq!((fast.status, fast.body.as_str()), (200, "plain"));
    assert_eq!((slow.status, slow.body.as_str()), (200, "plain"));
    // Per response, not per path: `Age`, the request id, `Cache-Status`,
    // and the `Date` Pingora writes when the stored response has none (two
    // answers can straddle a second).
    let same_in_both = |g: &Got| {
        let mut v: Vec<(String, String)> = g
            .headers
            .iter()
            .filter(|(n, _)| {
                !matches!(n.as_str(), "age" | "x-request-id" | "cache-status" | "date")
            })
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(same_in_both(&fast), same_in_both(&slow));
    assert_eq!(fast.header("x-origin"), Some("kept"));
    assert_eq!(
        fast.header("surrogate-key"),
        None,
        "purge tags stay private"
    );
    assert_eq!(fast.header("content-length"), Some("5"));
    for got in [&fast, &slow] {
        let age: u64 = got.header("age").unwrap().parse().unwrap();
        assert!(
            (3..=5).contains(&age),
            "Age replaces the stored one and counts it: {age}"
        );
        assert!(
            got.cache_status().starts_with("test-pop; hit; ttl=5"),
            "{}",
            got.cache_status()
        );
    }
    let head = send(&gw, reqwest::Method::HEAD, "/p", &[]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), Some("5"));
    assert_eq!(lookups(), before + 1, "HEAD from the stored GET, fast too");
    let range = get_with(&gw, "/p", &[("range", "bytes=0-1")]).await;
    assert_eq!((range.status, range.body.as_str()), (206, "pl"));
    assert_eq!(lookups(), before + 2, "ranges go through pingora-cache");
    // Vary: the variant stored first (the primary slot) is answered fast;
    // another variant lives in a secondary slot, which pingora-cache finds.
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    get_with(&gw, "/v", &en).await;
    let l = lookups();
    let en_fast = get_with(&gw, "/v", &en).await;
    assert_eq!(lookups(), l, "the primary variant is served fast");
    assert_eq!(en_fast.body, "varied");
    assert!(
        en_fast.cache_status().starts_with("test-pop; hit"),
        "{}",
        en_fast.cache_status()
    );
    let en_slow = get_with(&gw, "/v", &[en[0], ("if-none-match", "\"other\"")]).await;
    assert!(lookups() > l);
    assert_eq!(same_in_both(&en_fast), same_in_both(&en_slow));
    let l = lookups();
    let fr_miss = get_with(&gw, "/v", &fr).await;
    assert!(lookups() > l, "another variant goes through pingora-cache");
    assert!(
        fr_miss.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr_miss.cache_status()
    );
    let l = lookups();
    let fr_hit = get_with(&gw, "/v", &fr).await;
    assert!(lookups() > l, "a secondary variant is pingora-cache's hit");
    assert!(
        fr_hit.cache_status().starts_with("test-pop; hit"),
        "{}",
        fr_hit.cache_status()
    );
    let l = lookups();
    get_with(&gw, "/v", &en).await;
    assert_eq!(lookups(), l, "the primary variant is still served fast");
    assert_eq!(origin.hits("/p"), 1);
    assert_eq!(origin.hits("/v"), 2, "one fetch per variant");
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"edgegate_cache_requests_total{result="hit",route="all"} 8"#),
        "fast hits are counted as hits: {m}"
    );
}

#[tokio::test]
async fn age_from_the_origin_shortens_freshness_and_counts_in_age() {
    let origin = Scripted::start().await;
    origin.set("/old", Reply::ok("max-age=100", "x").header("age", "99"));
    origin.set("/done", Reply::ok("max-age=100", "x").header("age", "150"));
    let gw = gateway(&origin, CACHE, "").await;
    get(&gw, "/old").await;
    let hit = get(&gw, "/old").await;
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!(age >= 99, "age {age} counts the origin's");
    assert!(hit.cache_status().contains("hit"));
    // Already older than its lifetime when it arrived: stale at once.
    get(&gw, "/done").await;
    get(&gw, "/done").await;
    assert_eq!(origin.hits("/done"), 2);
}

#[tokio::test]
async fn expired_responses_revalidate_with_etag_and_last_modified() {
    let origin = Scripted::start().await;
    origin.set(
        "/e",
        Reply::ok("max-age=1", "etagged").header("etag", "\"v1\""),
    );
    origin.set(
        "/lm",
        Reply::ok("max-age=1", "dated").header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
    );
    let gw = gateway(&origin, CACHE, "").await;
    get(&gw, "/e").await;
    get(&gw, "/lm").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The 304 carries a longer lifetime: it refreshes the stored headers.
    origin.set(
        "/e",
        Reply::ok("max-age=60", "changed-but-304").header("etag", "\"v1\""),
    );
    let r = get(&gw, "/e").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "etagged", "the stored body, validated");
    assert_eq!(
        origin.last_headers("/e").get("if-none-match").unwrap(),
        "\"v1\""
    );
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    let r = get(&gw, "/e").await;
    assert!(
        r.cache_status().contains("hit"),
        "refreshed: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/e"), 2);

    let r = get(&gw, "/lm").await;
    assert_eq!(r.body, "dated");
    assert_eq!(
        origin.last_headers("/lm").get("if-modified-since").unwrap(),
        "Tue, 01 Jan 2030 00:00:00 GMT"
    );
    assert_eq!(origin.hits("/lm"), 2);

    // A client's own conditional request is answered from the cache.
    let r = get_with(&gw, "/e", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status, 304);
    assert_eq!(origin.hits("/e"), 2);
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_vary_star_is_not_stored() {
    let origin = Scripted::start().await;
    origin.set(
        "/v",
        Reply::ok("max-age=60", "varied").header("vary", "Accept-Language"),
    );
    origin.set("/star", Reply::ok("max-age=60", "star").header("vary", "*"));
    let gw = gateway(&origin, CACHE, "").await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    get_with(&gw, "/v", &en).await;
    assert!(get_with(&gw, "/v", &en)
        .await
        .cache_status()
        .contains("hit"));
    let r = get_with(&gw, "/v", &fr).await;
    assert!(
        r.cache_status().contains("fwd=vary-miss"),
        "{}",
        r.cache_status()
    );
    assert!(get_with(&gw, "/v", &fr)
        .await
        .cache_status()
        .contains("hit"));
    assert!(get_with(&gw, "/v", &en)
        .await
        .cache_status()
        .contains("hit"));
    assert_eq!(origin.hits("/v"), 2);

    get(&gw, "/star").await;
    get(&gw, "/star").await;
    assert_eq!(origin.hits("/star"), 2);
}

#[tokio::test]
async fn vary_ignore_leaves_out_headers_a_key_already_covers() {
    let origin = Scripted::start().await;
    origin.set(
        "/v",
        Reply::ok("max-age=60", "varied").header("vary", "Accept-Language, X-Other"),
    );
    let gw = gateway(
        &origin,
        "[routes.cache]\nvary_ignore = [\"Accept-Language\"]\n",
        "",
    )
    .await;
    get_with(&gw, "/v", &[("accept-language", "en")]).await;
    let r = get_with(&gw, "/v", &[("accept-language", "fr")]).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(r.header("vary"), Some("Accept-Language, X-Other"));
    let r = get_with(&gw, "/v", &[("x-other", "1")]).await;
    assert!(
        r.cache_status().contains("vary-miss"),
        "still varies on the rest: {}",
        r.cache_status()
    );
    assert_eq!(origin.hits("/v"), 2);
}

#[tokio::test]
async fn what_must_not_be_shared_is_not_stored() {
    let origin = Scripted::start().await;
    origin.set("/no-store", Reply::ok("no-store, max-age=60", "x"));
    origin.set("/private", Reply::ok("private, max-age=60", "x"));
    origin.set(
        "/cookie",
        Reply::ok("max-age=60", "x").header("set-cookie", "id=1"),
    );
    origin.set("/auth", Reply::ok("max-age=60", "x"));
    origin.set("/auth-public", Reply::ok("public, max-age=60", "x"));
    origin.set("/nothing", Reply::ok("", "x"));
    let gw = gateway(&origin, CACHE, "").await;
    let auth = [("authorization", "Bearer t")];
    for _ in 0..2 {
        get(&gw, "/no-store").await;
        get(&gw, "/private").await;
        get(&gw, "/cookie").await;
        get_with(&gw, "/auth", &auth).await;
        get_with(&gw, "/auth-public", &auth).await;
        get(&gw, "/nothing").await;
    }
    for p in ["/no-store", "/private", "/cookie", "/auth", "/nothing"] {
        assert_eq!(origin.hits(p), 2, "{p} was stored");
    }
    assert_eq!(origin.hits("/auth-public"), 1, "public allows sharing");
    let r = get(&gw, "/cookie").await;
    assert!(
        r.cache_status().contains("fwd=bypass"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn set_cookie_is_stored_where_the_route_allows_it() {
    let origin = Scripted::start().await;
    origin.set(
        "/cookie",
        Reply::ok("max-age=60", "x").header("set-cookie", "id=1"),
    );
    let gw = gateway(&origin, "[routes.cache]\nallow_set_cookie = true\n", "").await;
    get(&gw, "/cookie").await;
    let r = get(&gw, "/cookie").await;
    assert_eq!(r.header("set-cookie"), Some("id=1"));
    assert_eq!(origin.hits("/cookie"), 1);
}

#[tokio::test]
async fn heuristic_freshness_only_where_allowed_and_default_ttl() {
    let origin = Scripted::start().await;
    // Last-modified long ago: 10% heuristic.
    origin.set(
        "/lm",
        Reply::ok("", "x").header("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT"),
    );
    // 201 is not heuristically cacheable.
    origin.set(
        "/created",
        Reply {
            status: 201,
            ..Reply::ok("", "x").header("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")
        },
    );
    origin.set("/public", Reply::ok("public", "x"));
    origin.set("/plain", Reply::ok("", "x"));
    let gw = gateway(&origin, "[routes.cache]\ndefault_ttl = \"30s\"\n", "").await;
    for _ in 0..2 {
        for p in ["/lm", "/created", "/public", "/plain"] {
            get(&gw, p).await;
        }
    }
    assert_eq!(origin.hits("/lm"), 1);
    assert_eq!(origin.hits("/created"), 2);
    assert_eq!(origin.hits("/public"), 1, "default_ttl for public");
    assert_eq!(
        origin.hits("/plain"),
        1,
        "default_ttl for a heuristically cacheable 200"
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_url_and_its_location() {
    let origin = Scripted::start().await;
    origin.set("/item", Reply::ok("max-age=60", "item"));
    origin.set("/list", Reply::ok("max-age=60", "list"));
    let gw = gateway(&origin, CACHE, "").await;
    get(&gw, "/item").await;
    get(&gw, "/list").await;
    assert_eq!(get(&gw, "/item").await.body, "item");
    origin.set(
        "/item",
        Reply::ok("max-age=60", "item").header("location", "/list"),
    );
    let r = send(&gw, reqwest::Method::POST, "/item", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.cache_status().contains("fwd=method"),
        "{}",
        r.cache_status()
    );
    get(&gw, "/item").await;
    get(&gw, "/list").await;
    assert_eq!(origin.hits("/item"), 3, "GET, POST, GET after invalidation");
    assert_eq!(origin.hits("/list"), 2, "Location invalidated too");
    // A failed unsafe request invalidates nothing.
    origin.set(
        "/list",
        Reply {
            status: 500,
            ..Reply::ok("", "err")
        },
    );
    send(&gw, reqwest::Method::DELETE, "/list", &[]).await;
    origin.set("/list", Reply::ok("max-age=60", "list"));
    get(&gw, "/list").await;
    assert_eq!(origin.hits("/list"), 3);
}

#[tokio::test]
async fn head_and_ranges_are_served_from_a_cached_get() {
    let origin = Scripted::start().await;
    origin.set("/r", Reply::ok("max-age=60", "0123456789"));
    origin.set("/h", Reply::ok("max-age=60", "head-first"));
    let gw = gateway(&origin, CACHE, "").await;
    get(&gw, "/r").await;
    let head = send(&gw, reqwest::Method::HEAD, "/r", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"));
    let part = get_with(&gw, "/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, "2345");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(origin.hits("/r"), 1);
    // A HEAD miss fetches (and stores) the whole GET.
    send(&gw, reqwest::Method::HEAD, "/h", &[]).await;
    assert_eq!(get(&gw, "/h").await.body, "head-first");
    assert_eq!(origin.hits("/h"), 1);
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let origin = Scripted::start().await;
    origin.set(
        "/slow",
        Reply {
            delay: Duration::from_millis(400),
            ..Reply::ok("max-age=60", "slow")
        },
    );
    let gw = gateway(&origin, CACHE, "").await;
    let gw = Arc::new(gw);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { get(&gw, "/slow").await })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.body, "slow");
        if r.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(origin.hits("/slow"), 1);
    assert!(collapsed >= 1, "waiters report collapsed");
    let m = gw.metrics().await;
    assert!(
        m.contains("edgegate_cache_coalesced_total{route=\"all\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn uncacheable_keys_are_not_serialised_behind_the_lock() {
    let origin = Scripted::start().await;
    origin.set(
        "/dyn",
        Reply {
            delay: Duration::from_millis(300),
            ..Reply::ok("no-store", "dynamic")
        },
    );
    let gw = Arc::new(gateway(&origin, CACHE, "").await);
    get(&gw, "/dyn").await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { get(&gw, "/dyn").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().body, "dynamic");
    }
    assert_eq!(origin.hits("/dyn"), 5);
    assert!(
        origin.max_in_flight() >= 2,
        "known-uncacheable requests went to the origin in parallel"
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = Scripted::start().await;
    origin.set(
        "/swr",
        Reply::ok("max-age=1, stale-while-revalidate=60", "v1"),
    );
    let gw = gateway(&origin, CACHE, "").await;
    get(&gw, "/swr").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.set(
        "/swr",
        Reply {
            delay: Duration::from_millis(300),
            ..Reply::ok("max-age=60", "v2")
        },
    );
    let stale = get(&gw, "/swr").await;
    assert_eq!(stale.body, "v1", "served stale at once");
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let again = get(&gw, "/swr").await;
    assert_eq!(again.body, "v1", "still stale while the refresh runs");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fresh = get(&gw, "/swr").await;
    assert_eq!(fresh.body, "v2");
    assert!(fresh.cache_status().contains("hit"));
    assert_eq!(origin.hits("/swr"), 2, "one background refresh");
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_fails_or_is_down() {
    let origin = Scripted::start().await;
    origin.set("/sie", Reply::ok("max-age=1, stale-if-error=60", "good"));
    origin.set("/grace", Reply::ok("max-age=1", "graced"));
    origin.set("/strict", Reply::ok("max-age=1, must-revalidate", "strict"));
    let gw = gateway(&origin, "[routes.cache]\nstale_if_error = \"60s\"\n", "").await;
    for p in ["/sie", "/grace", "/strict"] {
        get(&gw, p).await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for p in ["/sie", "/grace", "/strict"] {
        origin.set(
            p,
            Reply {
                status: 503,
                ..Reply::ok("no-store", "down")
            },
        );
    }
    let r = get(&gw, "/sie").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert!(
        r.cache_status().contains("fwd=stale; fwd-status=503"),
        "{}",
        r.cache_status()
    );
    let r = get(&gw, "/grace").await;
    assert_eq!(r.body, "graced", "the route's grace applies");
    let r = get(&gw, "/strict").await;
    assert_eq!(r.status, 503, "must-revalidate forbids stale");

    // Origin gone entirely: connection refused.
    drop(origin);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&gw, "/sie").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert!(r.cache_status().contains("stale-if-error"));
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag_with_soft_purge_and_a_token() {
    let origin = Scripted::start().await;
    origin.set(
        "/p/1",
        Reply::ok("max-age=60", "1")
            .header("surrogate-key", "red blue")
            .header("etag", "\"1\""),
    );
    origin.set(
        "/p/2",
        Reply::ok("max-age=60", "2").header("cache-tag", "blue"),
    );
    origin.set(
        "/q",
        Reply::ok("max-age=60", "q").header("surrogate-key", "red"),
    );
    origin.set("/q?x=1", Reply::ok("max-age=60", "qx"));
    let token = "purge-token-0123456789";
    let gw = gateway(
        &origin,
        CACHE,
        &format!("[cache]\npurge_token = \"{token}\"\n"),
    )
    .await;
    let all = ["/p/1", "/p/2", "/q", "/q?x=1"];
    for p in all {
        get(&gw, p).await;
    }
    let r = get(&gw, "/p/1").await;
    assert!(
        r.header("surrogate-key").is_none(),
        "tags are not sent to clients"
    );
    assert_eq!(purge(&gw, "tag=red", None).await.0, 401);
    assert_eq!(
        purge(&gw, "tag=red", Some("wrong-token-0000000000"))
            .await
            .0,
        401
    );

    let (s, j) = purge(&gw, "tag=blue", Some(token)).await;
    assert_eq!((s, j["purged"].as_u64()), (200, Some(2)));
    for p in all {
        get(&gw, p).await;
    }
    assert_eq!(
        all.map(|p| origin.hits(p)),
        [2, 2, 1, 1],
        "only blue-tagged objects refetched"
    );

    let url = "url=http%3A%2F%2F127.0.0.1%2Fq%3Fx%3D1";
    let (_, j) = purge(&gw, url, Some(token)).await;
    assert_eq!(j["purged"], 1);
    let (_, j) = purge(&gw, "host=127.0.0.1&prefix=/p/", Some(token)).await;
    assert_eq!(j["purged"], 2);
    for p in all {
        get(&gw, p).await;
    }
    assert_eq!(all.map(|p| origin.hits(p)), [3, 3, 1, 2]);

    // Soft purge: kept, but revalidated (304) before it is served again.
    let (_, j) = purge(&gw, "tag=red&soft=1", Some(token)).await;
    assert_eq!(j["purged"], 2);
    let r = get(&gw, "/p/1").await;
    assert_eq!(r.body, "1");
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert!(origin.last_headers("/p/1").contains_key("if-none-match"));
    let (s, j) = purge(&gw, "colour=red", Some(token)).await;
    assert_eq!(s, 400, "{j}");
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"edgegate_cache_purges_total{kind="tag"} 2"#),
        "{m}"
    );
}

#[tokio::test]
async fn the_byte_bound_evicts_and_objects_over_the_cap_are_not_stored() {
    let origin = Scripted::start().await;
    let big = "b".repeat(100 << 10);
    for i in 0..20 {
        origin.set(&format!("/o/{i}"), Reply::ok("max-age=60", &big));
    }
    let huge = "h".repeat(300 << 10);
    origin.set("/huge", Reply::ok("max-age=60", &huge));
    origin.set(
        "/huge-chunked",
        Reply {
            chunked: true,
            ..Reply::ok("max-age=60", &huge)
        },
    );
    let gw = gateway(
        &origin,
        "[routes.cache]\nmax_object_size = \"256KiB\"\n",
        "[cache]\nsize = \"1MiB\"\n",
    )
    .await;
    for i in 0..20 {
        get(&gw, &format!("/o/{i}")).await;
    }
    let m = gw.metrics().await;
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {m}"))
    };
    assert!(value("edgegate_cache_bytes ") <= 1 << 20);
    assert!(value("edgegate_cache_evictions_total ") >= 10, "{m}");
    for _ in 0..2 {
        let r = get(&gw, "/huge").await;
        assert_eq!(r.body.len(), huge.len());
        let r = get(&gw, "/huge-chunked").await;
        assert_eq!(r.body, huge, "streamed through whole");
    }
    assert_eq!(origin.hits("/huge"), 2);
    assert_eq!(origin.hits("/huge-chunked"), 2);
}

#[tokio::test]
async fn keys_separate_hosts_and_follow_the_route_key_policy() {
    let origin = Scripted::start().await;
    origin.set("/k", Reply::ok("max-age=60", "k"));
    origin.set("/s", Reply::ok("max-age=60", "s"));
    let gw = gateway(
        &origin,
        "[routes.cache]\nquery = \"sort\"\nkey_headers = [\"x-device\"]\nkey_cookies = [\"ab\"]\n",
        "[cache]\ndebug = true\n",
    )
    .await;
    get_with(&gw, "/k", &[("host", "a.test")]).await;
    get_with(&gw, "/k", &[("host", "b.test")]).await;
    assert_eq!(origin.hits("/k"), 2, "two hosts never share an entry");
    let r = get_with(&gw, "/k", &[("host", "A.TEST:8080")]).await;
    assert!(r.cache_status().contains("hit"), "host normalised");
    assert!(
        r.cache_status().contains("key=\"a.test/k|http||\""),
        "{}",
        r.cache_status()
    );

    get(&gw, "/s?b=2&a=1").await;
    let r = get(&gw, "/s?a=1&b=2").await;
    assert!(
        r.cache_status().contains("hit"),
        "sorted query: {}",
        r.cache_status()
    );
    get_with(&gw, "/s?a=1&b=2", &[("x-device", "phone")]).await;
    get_with(&gw, "/s?a=1&b=2", &[("cookie", "z=1; ab=green")]).await;
    let r = get_with(&gw, "/s?a=1&b=2", &[("cookie", "ab=green; y=2")]).await;
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(origin.hits("/s?b=2&a=1") + origin.hits("/s?a=1&b=2"), 3);
}

#[tokio::test]
async fn client_no_cache_is_ignored_unless_the_route_honours_it() {
    let origin = Scripted::start().await;
    origin.set("/n", Reply::ok("max-age=60", "n").header("etag", "\"n\""));
    let gw = gateway(&origin, CACHE, "").await;
    get(&gw, "/n").await;
    get_with(&gw, "/n", &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.hits("/n"), 1);

    let origin = Scripted::start().await;
    origin.set("/n", Reply::ok("max-age=60", "n").header("etag", "\"n\""));
    let gw = gateway(
        &origin,
        "[routes.cache]\nhonor_client_no_cache = true\n",
        "",
    )
    .await;
    get(&gw, "/n").await;
    let r = get_with(&gw, "/n", &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.hits("/n"), 2);
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn waiters_give_up_on_a_slow_fill_after_the_lock_timeout() {
    let origin = Scripted::start().await;
    origin.set(
        "/glacial",
        Reply {
            delay: Duration::from_millis(1500),
            ..Reply::ok("max-age=60", "late")
        },
    );
    let gw = Arc::new(gateway(&origin, "[routes.cache]\nlock_timeout = \"200ms\"\n", "").await);
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { get(&gw, "/glacial").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = get(&gw, "/glacial").await;
    assert_eq!(waiter.body, "late");
    assert!(
        waiter.cache_status().contains("detail=cachelocktimeout"),
        "{}",
        waiter.cache_status()
    );
    assert_eq!(first.await.unwrap().body, "late");
    assert_eq!(
        origin.hits("/glacial"),
        2,
        "the waiter went to the origin itself"
    );
    assert!(get(&gw, "/glacial").await.cache_status().contains("hit"));
}
