//! The hit lane (`proxy::lane`): plain fresh hits answered before Pingora's
//! session, shown on raw HTTP/1.1 connections against the scripted origin.
//! Its counter (`edgegate_cache_lane_hits_total`) tells which path answered.

use crate::cache::{Reply, Scripted};
use crate::harness::{simple_config, Gateway};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status_line: String,
    /// Fields in wire order, names as sent.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn status(&self) -> u16 {
        self.status_line[9..12].parse().unwrap()
    }
}

/// A raw keep-alive HTTP/1.1 connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(gw: &Gateway) -> Conn {
        Conn {
            s: TcpStream::connect(gw.http).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response (`head`: to a HEAD request, so no body).
    async fn answer(&mut self, head: bool) -> Answer {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(self.fill().await, "connection closed before a response");
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap().to_string();
        let fields: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        let mut answer = Answer {
            status_line,
            fields,
            body: Vec::new(),
        };
        let len: usize = if head {
            0
        } else {
            answer
                .field("content-length")
                .map_or(0, |v| v.parse().unwrap())
        };
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        answer.body = self.buf.drain(..len).collect();
        answer
    }

    /// Whether the gateway closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: lane.test\r\n{extra}\r\n").into_bytes()
}

fn lane_hits(gw: &Gateway) -> u64 {
    gw.shared.metrics.cache_lane_hits.get()
}

async fn gateway(origin: &Scripted, server_extra: &str) -> Gateway {
    Gateway::start(&config(origin, server_extra)).await
}

fn config(origin: &Scripted, server_extra: &str) -> String {
    simple_config(&[origin.addr], "[routes.cache]\n")
        .replace("[server]\n", &format!("[server]\n{server_extra}\n"))
}

fn scripted_object(origin: &Scripted) {
    origin.set(
        "/p",
        Reply::ok("max-age=60", "plain")
            .header("etag", "\"v1\"")
            .header("surrogate-key", "t1")
            .header("x-origin", "kept")
            .header("X-Mixed-Case", "as sent")
            .header("via", "1.1 upstream-cdn")
            .header("x-request-id", "the-fill-request")
            .header("age", "3"),
    );
}

/// The scripted object, a gateway caching it, and a connection that filled
/// the cache with its first request (a miss, Pingora's).
async fn filled() -> (Scripted, Gateway, Conn, Answer) {
    let origin = Scripted::start().await;
    scripted_object(&origin);
    let gw = gateway(&origin, "").await;
    let mut c = Conn::open(&gw).await;
    c.send(&get("/p", "")).await;
    let fill = c.answer(false).await;
    (origin, gw, c, fill)
}

/// A lane answer carries exactly what Pingora's answer for the same stored
/// object carries (field names in the same case), and `server.hit_lane =
/// false` turns the lane off at reload.
#[tokio::test]
async fn the_hit_lane_answers_a_plain_hit_as_pingora_would() {
    let (origin, gw, mut c, fill) = filled().await;
    assert_eq!(
        fill.field("cache-status"),
        Some("test-pop; fwd=uri-miss; fwd-status=200; stored")
    );
    assert_eq!(lane_hits(&gw), 0, "a miss is Pingora's");

    let ask = get("/p", "X-Request-Id: client-id-7\r\nAccept: */*\r\n");
    c.send(&ask).await;
    let lane = c.answer(false).await;
    assert_eq!(lane_hits(&gw), 1);

    gw.rewrite(&config(&origin, "hit_lane = false"));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let mut c = Conn::open(&gw).await;
    c.send(&ask).await;
    let pingora = c.answer(false).await;
    assert_eq!(lane_hits(&gw), 1, "the lane is off after the reload");
    assert_eq!(origin.hits("/p"), 1, "both answers came from the store");

    // `Age`, `Date` and `Cache-Status`'s `ttl` are per response (the two
    // may straddle a second); each is checked below.
    let comparable = |a: &Answer| {
        let mut f: Vec<(String, String)> = a
            .fields
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "Age" | "Date" | "cache-status"))
            .cloned()
            .collect();
        f.sort();
        f
    };
    assert_eq!(lane.status_line, pingora.status_line);
    assert_eq!(comparable(&lane), comparable(&pingora));
    assert_eq!(lane.body, pingora.body);
    for a in [&lane, &pingora] {
        assert_eq!(a.body, b"plain");
        assert!(a.field("Date").is_some());
        let age: u64 = a.field("Age").unwrap().parse().unwrap();
        assert!((3..=5).contains(&age), "Age counts the stored one: {age}");
        assert_eq!(a.field("x-request-id"), Some("client-id-7"));
        assert_eq!(a.field("via"), Some("1.1 upstream-cdn, 1.1 test-pop"));
        assert_eq!(a.field("X-Mixed-Case"), Some("as sent"));
        assert_eq!(a.field("surrogate-key"), None, "purge tags stay private");
        assert_eq!(a.field("Connection"), Some("keep-alive"));
        assert_eq!(a.field("Accept-Ranges"), Some("bytes"));
        assert!(a
            .field("cache-status")
            .unwrap()
            .starts_with("test-pop; hit; ttl="));
        assert_eq!(
            a.fields.iter().filter(|(n, _)| n == "x-request-id").count(),
            1,
            "the stored request id is replaced, not repeated"
        );
    }
    // The lane's answer counts as a hit like any other. (Pingora's path
    // counts in its logging phase, after the answer is sent: poll.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics().await;
        let hits = m.contains("edgegate_cache_requests_total{result=\"hit\",route=\"all\"} 2");
        if hits && m.contains("edgegate_cache_lane_hits_total 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On one keep-alive connection, lane hits and everything Pingora answers
/// (misses, ranges, conditionals, malformed requests) take turns, in order,
/// pipelined or not.
#[tokio::test]
async fn the_hit_lane_and_pingora_share_a_connection_in_order() {
    let (origin, gw, mut c, fill) = filled().await;
    assert_eq!(fill.body, b"plain");
    origin.set("/q", Reply::ok("no-store", "from the origin"));

    // Hit, then a miss Pingora fetches, then a hit again: the connection
    // comes back to the lane after Pingora's turn.
    c.send(&get("/p", "")).await;
    assert_eq!(c.answer(false).await.body, b"plain");
    assert_eq!(lane_hits(&gw), 1);
    c.send(&get("/q", "")).await;
    assert_eq!(c.answer(false).await.body, b"from the origin");
    c.send(&get("/p", "")).await;
    assert_eq!(c.answer(false).await.body, b"plain");
    assert_eq!(lane_hits(&gw), 2);

    // Ranges and conditionals are pingora-cache's, from the same object.
    c.send(&get("/p", "Range: bytes=0-1\r\n")).await;
    let range = c.answer(false).await;
    assert_eq!((range.status(), &range.body[..]), (206, &b"pl"[..]));
    c.send(&get("/p", "If-None-Match: \"v1\"\r\n")).await;
    assert_eq!(c.answer(true).await.status(), 304);
    assert_eq!(lane_hits(&gw), 2);

    // Pipelined hits are answered in order, in one go.
    let mut three = get("/p", "X-Request-Id: one\r\n");
    three.extend(get("/p", "X-Request-Id: two\r\n"));
    three.extend(b"HEAD /p HTTP/1.1\r\nHost: lane.test\r\nX-Request-Id: three\r\n\r\n".to_vec());
    c.send(&three).await;
    for (id, head) in [("one", false), ("two", false), ("three", true)] {
        let a = c.answer(head).await;
        assert_eq!(a.field("x-request-id"), Some(id));
        assert_eq!(a.field("content-length"), Some("5"));
        assert_eq!(a.body, if head { &b""[..] } else { &b"plain"[..] });
    }
    assert_eq!(lane_hits(&gw), 5);

    // A hit pipelined ahead of a miss: the lane answers the first and hands
    // the bytes it read of the second to Pingora.
    let mut pair = get("/p", "");
    pair.extend(get("/q", ""));
    c.send(&pair).await;
    assert_eq!(c.answer(false).await.body, b"plain");
    assert_eq!(c.answer(false).await.body, b"from the origin");
    assert_eq!(lane_hits(&gw), 6);
    assert_eq!(origin.hits("/q"), 2);

    // A cached path asked with ambiguous framing is refused by Pingora's
    // checks, never answered from the store or forwarded, and the connection
    // is closed.
    c.send(b"GET /p HTTP/1.1\r\nHost: lane.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.status(), 400);
    assert!(c.closed().await);
    assert_eq!(lane_hits(&gw), 6);
    assert_eq!(origin.hits("/p"), 1, "only the fill reached the origin");
}

/// What the lane leaves to Pingora, request by request: each is answered
/// correctly and none is counted as a lane hit.
#[tokio::test]
async fn requests_the_lane_does_not_own_go_to_pingora() {
    let (_origin, gw, _, _) = filled().await;
    let cases: [(&[u8], u16); 6] = [
        // A fragment in the target.
        (b"GET /p#frag HTTP/1.1\r\nHost: lane.test\r\n\r\n", 200),
        // HTTP/1.0: Pingora decides keep-alive.
        (
            b"GET /p HTTP/1.0\r\nHost: lane.test\r\nConnection: keep-alive\r\n\r\n",
            200,
        ),
        // Absolute-form target.
        (
            b"GET http://lane.test/p HTTP/1.1\r\nHost: lane.test\r\n\r\n",
            200,
        ),
        // Dot segments are refused before routing.
        (b"GET /x/../p HTTP/1.1\r\nHost: lane.test\r\n\r\n", 400),
        // Two Host fields.
        (
            b"GET /p HTTP/1.1\r\nHost: lane.test\r\nHost: other.test\r\n\r\n",
            400,
        ),
        // A body on a GET.
        (
            b"GET /p HTTP/1.1\r\nHost: lane.test\r\nContent-Length: 2\r\n\r\nhi",
            200,
        ),
    ];
    for (request, status) in cases {
        let mut c = Conn::open(&gw).await;
        c.send(request).await;
        let a = c.answer(false).await;
        assert_eq!(
            a.status(),
            status,
            "{}: {a:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(lane_hits(&gw), 0);
    // And `Connection: close` is honoured: answered, then closed.
    let mut c = Conn::open(&gw).await;
    c.send(&get("/p", "Connection: close\r\n")).await;
    let a = c.answer(false).await;
    assert_eq!((a.status(), a.field("connection")), (200, Some("close")));
    assert!(c.closed().await);
    assert_eq!(lane_hits(&gw), 0);
}

/// The serialised head leaves out the request-id field by the name current
/// when it was made; after a reload renames the header, lane answers stay
/// what Pingora would send.
#[tokio::test]
async fn a_renamed_request_id_header_holds_after_a_reload() {
    let origin = Scripted::start().await;
    scripted_object(&origin); // carries `x-request-id` from its fill
    origin.set("/bare", Reply::ok("max-age=60", "bare"));
    let gw = gateway(&origin, "").await;
    let mut c = Conn::open(&gw).await;
    for path in ["/p", "/bare", "/p", "/bare"] {
        c.send(&get(path, "")).await;
        c.answer(false).await;
    }
    assert_eq!(lane_hits(&gw), 2, "both heads serialised");

    gw.rewrite(&config(&origin, "request_id_header = \"x-trace-id\""));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    // An object without either field: still the lane's, with the new name.
    c.send(&get("/bare", "X-Trace-Id: t-1\r\n")).await;
    let a = c.answer(false).await;
    assert_eq!(lane_hits(&gw), 3);
    assert_eq!(a.field("x-trace-id"), Some("t-1"));
    assert_eq!(a.field("x-request-id"), None);
    // An object carrying the old name: Pingora's, which keeps that field
    // (it is no longer the request id) and adds the new one.
    c.send(&get("/p", "X-Trace-Id: t-2\r\n")).await;
    let a = c.answer(false).await;
    assert_eq!(lane_hits(&gw), 3);
    assert_eq!(a.field("x-trace-id"), Some("t-2"));
    assert_eq!(a.field("x-request-id"), Some("the-fill-request"));
}

/// A purge takes effect on the lane's next answer: the lane reads the
/// store's freshness like pingora-cache does, soft purges included.
#[tokio::test]
async fn purges_reach_the_lane_at_once() {
    let (origin, gw, mut c, _) = filled().await;
    c.send(&get("/p", "")).await;
    c.answer(false).await;
    assert_eq!(lane_hits(&gw), 1);
    let mut hits = 1;
    for soft in ["0", "1"] {
        let query = format!("url=http%3A%2F%2Flane.test%2Fp&soft={soft}");
        let (status, _) = crate::cache::purge(&gw, &query, None).await;
        assert_eq!(status, 200);
        let before = origin.hits("/p");
        c.send(&get("/p", "")).await;
        assert_eq!(c.answer(false).await.body, b"plain");
        assert_eq!(
            origin.hits("/p"),
            before + 1,
            "purged (soft={soft}): fetched again"
        );
        assert_eq!(lane_hits(&gw), hits, "a purged object is not the lane's");
        c.send(&get("/p", "")).await;
        c.answer(false).await;
        hits += 1;
        assert_eq!(lane_hits(&gw), hits, "the new copy is");
    }
}

/// Keep-alive clients hit a cached object through the lane while the
/// config reloads, the lane switching off and on: no request fails, and
/// every answer is the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_lane_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (origin, gw, _, _) = filled().await;
    let gw = Arc::new(gw);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut c = Conn::open(&gw).await;
            while !stop.load(Ordering::SeqCst) {
                c.send(&get("/p", "")).await;
                let a = c.answer(false).await;
                if a.status() == 200 && a.body == b"plain" {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for i in 0..10 {
        let lane = if i % 2 == 0 { "hit_lane = false" } else { "" };
        gw.rewrite(&config(&origin, lane));
        assert_eq!(gw.reload().await.status(), 200);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok.load(Ordering::SeqCst) > 50, "load ran");
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(lane_hits(&gw) > 0, "the lane answered some of them");
    assert_eq!(origin.hits("/p"), 1, "every answer came from the store");
}

/// A client's `no-cache` is the route's call: where the route ignores it
/// (the default) the lane answers as the store would; where the route
/// honours it, the request is pingora-cache's and revalidates.
#[tokio::test]
async fn client_revalidation_is_the_routes_call_on_the_lane_too() {
    let (origin, gw, mut c, _) = filled().await;
    for directive in ["Cache-Control: no-cache\r\n", "Pragma: no-cache\r\n"] {
        c.send(&get("/p", directive)).await;
        assert_eq!(c.answer(false).await.body, b"plain");
    }
    assert_eq!(lane_hits(&gw), 2, "ignored by the route: the lane's");
    assert_eq!(origin.hits("/p"), 1);

    let honouring = simple_config(
        &[origin.addr],
        "[routes.cache]\nhonor_client_no_cache = true\n",
    );
    gw.rewrite(&honouring);
    assert_eq!(gw.reload().await.status(), 200);
    c.send(&get("/p", "Cache-Control: no-cache\r\n")).await;
    assert_eq!(c.answer(false).await.body, b"plain");
    assert_eq!(lane_hits(&gw), 2, "honoured: pingora-cache's");
    assert_eq!(origin.hits("/p"), 2, "revalidated at the origin");
    c.send(&get("/p", "")).await;
    c.answer(false).await;
    assert_eq!(lane_hits(&gw), 3, "without the directive, the lane's again");
}

/// What one raw request got back, with what differs per response left out
/// (`Date`, `Age`, the generated request id, `Cache-Status`'s `ttl`).
pub async fn probe(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    // Until the first response is complete, the peer closes, or it goes
    // quiet (a request the server is still waiting on).
    loop {
        match tokio::time::timeout(Duration::from_millis(400), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(end)) = resp.parse(&got) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0);
            let head_req = raw.starts_with(b"HEAD");
            let chunked = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.eq_ignore_ascii_case(b"chunked")
            });
            if head_req || (chunked && got.ends_with(b"0\r\n\r\n")) {
                break;
            }
            if !chunked && got.len() >= end + len {
                break;
            }
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(end)) = resp.parse(&got) else {
        return format!("no complete answer ({} bytes)", got.len());
    };
    let mut fields: Vec<String> = resp
        .headers
        .iter()
        .filter(|h| {
            !["date", "age", "x-request-id"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
        })
        .map(|h| {
            let v = String::from_utf8_lossy(h.value);
            let v = match v.split_once("; ttl=") {
                Some((before, _)) => before.to_string(),
                None => v.into_owned(),
            };
            format!("{}: {v}", h.name)
        })
        .collect();
    fields.sort();
    let mut body = got[end..].to_vec();
    if fields
        .iter()
        .any(|f| f.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        body = dechunk(&body);
    }
    format!(
        "{} | {} | {}",
        resp.code.unwrap_or(0),
        fields.join(" | "),
        String::from_utf8_lossy(&body)
    )
}

/// A chunked body's data (chunk boundaries are a hop's business).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return b"<bad chunked body>".to_vec();
        };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size + 2 {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
    out
}

/// Differential check of the lane against Pingora's path: odd, malformed
/// and hostile request heads sent to a gateway with the lane and to one
/// without, both holding the same object. Every answer must match — the
/// lane either answers exactly as Pingora would or leaves the request to it.
#[tokio::test]
async fn the_lane_and_pingora_agree_on_odd_and_hostile_requests() {
    let origin = Scripted::start().await;
    scripted_object(&origin);
    origin.set(
        "/v",
        Reply::ok("max-age=60", "varies").header("vary", "Accept-Encoding"),
    );
    let with = gateway(&origin, "").await;
    let without = gateway(&origin, "hit_lane = false").await;
    let long = "a".repeat(9000);
    let cases: Vec<Vec<u8>> = [
        "GET /p HTTP/1.1\r\nHost: lane.test\r\n\r\n".to_string(),
        "HEAD /p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nhOsT: LANE.test:8080\r\n\r\n".into(),
        "GET /p HTTP/1.1\nHost: lane.test\n\n".into(),
        "\r\nGET /p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost : lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nX-A: b\r\n c\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nX-A:\tb\t\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test.\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: user@lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: \r\n\r\n".into(),
        "GET /p HTTP/1.1\r\n\r\n".into(),
        "GET http://lane.test/p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET http://other.test/p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p? HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p?a=1&b=2 HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /%70 HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET //p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /./p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p/%2e%2e/p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.0\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/2.0\r\nHost: lane.test\r\n\r\n".into(),
        "GET  /p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "get /p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "OPTIONS /p HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nContent-Length: 0\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nExpect: 100-continue\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nRange: bytes=1-2\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nIf-None-Match: \"v1\"\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nCache-Control: max-age=0\r\n\r\n".into(),
        format!("GET /p HTTP/1.1\r\nHost: lane.test\r\nX-Long: {long}\r\n\r\n"),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nX-Bin: a\u{7f}b\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nX-Utf8: é\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nX-Request-Id: has space\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\nX-Request-Id: mine\r\n\r\n".into(),
        "GET /v HTTP/1.1\r\nHost: lane.test\r\nAccept-Encoding: gzip\r\n\r\n".into(),
        "GET /v HTTP/1.1\r\nHost: lane.test\r\nAccept-Encoding: gzip\r\n\r\n".into(),
        "GET /v HTTP/1.1\r\nHost: lane.test\r\nAccept-Encoding: br\r\n\r\n".into(),
        "GET /v HTTP/1.1\r\nHost: lane.test\r\n\r\n".into(),
        "GET /p HTTP/1.1\r\nHost: lane.test\r\n".into(),
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    // Both stores hold `/p` before the cases run.
    for gw in [&with, &without] {
        probe(gw.http, &cases[0]).await;
    }
    let mut differ = Vec::new();
    for raw in &cases {
        let (a, b) = (probe(with.http, raw).await, probe(without.http, raw).await);
        if a != b {
            differ.push(format!(
                "{:?}\n  lane:    {a}\n  pingora: {b}",
                String::from_utf8_lossy(raw)
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert!(lane_hits(&with) >= 10, "the lane answered the plain ones");
    assert_eq!(lane_hits(&without), 0);
}
