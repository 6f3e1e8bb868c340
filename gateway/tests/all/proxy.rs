//! The request path: routing, forwarding headers, failover, limits,
//! smuggling, websockets, upstream errors.

use crate::harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_most_specific_wins() {
    let (a, b, c, d) = (
        Origin::start("any").await,
        Origin::start("api-prefix").await,
        Origin::start("api-exact").await,
        Origin::start("wildcard").await,
    );
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "{{admin}}"
[log]
access_log = false
[[listeners]]
listen = "{{listen}}"
[upstreams.a]
backends = ["{}"]
[upstreams.b]
backends = ["{}"]
[upstreams.c]
backends = ["{}"]
[upstreams.d]
backends = ["{}"]

# Deliberately least specific first: file order must not matter.
[[routes]]
name = "catch-all"
upstream = "a"
[[routes]]
name = "wild"
host = "*.example.com"
upstream = "d"
[[routes]]
name = "api"
host = "api.example.com"
path_prefix = "/v1"
upstream = "b"
[[routes]]
name = "api-exact"
host = "api.example.com"
path_exact = "/v1/users"
upstream = "c"
"#,
        a.addr, b.addr, c.addr, d.addr
    ))
    .await;
    let cases = [
        ("api.example.com", "/v1/users", "api-exact"),
        ("api.example.com", "/v1/users/7", "api-prefix"),
        ("API.example.com:8080", "/v1", "api-prefix"),
        ("api.example.com", "/v10", "wildcard"),
        ("www.example.com", "/v1/users", "wildcard"),
        ("example.com", "/v1/users", "any"),
        ("other.test", "/", "any"),
    ];
    for (host, path, want) in cases {
        let r = client()
            .get(gw.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}{path}");
        assert_eq!(r.headers()["x-origin"], want, "{host}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_and_never_forwarded() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&format!(
        r#"
[admin]
listen = "{{admin}}"
[[listeners]]
listen = "{{listen}}"
[upstreams.a]
backends = ["{}"]
[[routes]]
name = "only"
host = "only.test"
upstream = "a"
"#,
        o.addr
    ))
    .await;
    let r = client()
        .get(gw.url("/"))
        .header("host", "other.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(o.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_request_id_and_host() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "")).await;

    // Generated id: sent upstream and back, the same.
    let r = client()
        .get(gw.url("/a?b=c"))
        .header("host", "site.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID is generated");
    assert!(r.headers()["via"].to_str().unwrap().ends_with("test-pop"));
    let seen = o.last();
    assert_eq!(seen.headers["x-request-id"], id);
    assert_eq!(
        seen.headers["host"], "site.test",
        "Host preserved by default"
    );
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["forwarded"],
        "for=127.0.0.1;host=site.test;proto=http"
    );
    assert_eq!(seen.headers["via"], "1.1 test-pop");

    // Client id kept; earlier hops kept.
    let r = client()
        .get(gw.url("/"))
        .header("x-request-id", "client-chosen-42")
        .header("x-forwarded-for", "203.0.113.7")
        .header("via", "1.1 upstream-cdn")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
    let seen = o.last();
    assert_eq!(seen.headers["x-request-id"], "client-chosen-42");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["via"], "1.1 upstream-cdn, 1.1 test-pop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_off_sends_backend_address() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "preserve_host = false")).await;
    client()
        .get(gw.url("/"))
        .header("host", "site.test")
        .send()
        .await
        .unwrap();
    assert_eq!(o.last().headers["host"], o.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_a_backend_is_down_and_ejects_it() {
    let live = Origin::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&simple_config(&[dead, live.addr], "")).await;
    for i in 0..10 {
        let r = client()
            .post(gw.url("/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "request {i} fails over (connect failure is safe for POST)"
        );
    }
    assert_eq!(live.hits(), 10);
    // Passive ejection: the dead backend is marked and reported.
    let status: serde_json::Value = gw.status().await;
    let backends = status["upstreams"]["app"].as_array().unwrap();
    let dead_state = backends
        .iter()
        .find(|b| b["backend"] == dead.to_string())
        .unwrap();
    assert_eq!(dead_state["ejected"], true, "{status}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(&format!(
        "edgegate_upstream_errors_total{{backend=\"{dead}\",kind=\"connect\",upstream=\"app\"}}"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_502_with_short_plain_body() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&simple_config(&[dead], "")).await;
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(r.headers().contains_key("x-request-id"));
    let body = r.text().await.unwrap();
    assert!(body.len() < 100 && body.contains("bad gateway"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let o = Origin::start("slow").await;
    let gw = Gateway::start(&simple_config(
        &[o.addr],
        "retries = 0\n[routes.timeouts]\nread = \"200ms\"",
    ))
    .await;
    let r = client().get(gw.url("/slow/2000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.text().await.unwrap().contains("gateway timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_retry_on_another_backend_after_a_timeout() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&simple_config(
        &[a.addr, b.addr],
        "retries = 1\n[routes.timeouts]\nread = \"300ms\"",
    ))
    .await;
    // Each GET lands on one backend, times out, and is retried on the other,
    // which is just as slow: both backends see it, the client gets 504.
    let r = client().get(gw.url("/slow/1000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        a.hits() + b.hits(),
        2,
        "GET was retried once on the other backend"
    );
    // A POST is not idempotent: exactly one attempt.
    let r = client()
        .post(gw.url("/slow/1000"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.hits() + b.hits(), 3, "POST was not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_bodies_413() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(
        &[o.addr],
        "[routes.limits]\nmax_header_bytes = \"2KiB\"\nmax_body_bytes = \"1KiB\"",
    ))
    .await;
    let big = "x".repeat(3000);
    let r = client()
        .get(gw.url("/"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);

    let r = client()
        .post(gw.url("/"))
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "declared Content-Length over the limit");

    // Chunked body, no length declared: counted while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'b'; 512])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client().post(gw.url("/")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 413, "streamed body over the limit");

    let r = client()
        .post(gw.url("/"))
        .body(vec![b'a'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A streamed body is cut off upstream at the limit: the origin may have
    // seen its head, never a whole request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let complete: Vec<usize> = o
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.complete)
        .map(|s| s.body_len)
        .collect();
    assert_eq!(
        complete,
        vec![512],
        "only the request within limits reached the origin whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_are_never_forwarded() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "")).await;
    let cl_te = raw_exchange(
        gw.http,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(cl_te.starts_with("HTTP/1.1 400"), "{cl_te}");
    let dup_cl = raw_exchange(
        gw.http,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nContent-Length: 6\r\n\r\nabcdef",
    )
    .await;
    assert!(dup_cl.starts_with("HTTP/1.1 400"), "{dup_cl}");
    let te_obfuscated = raw_exchange(
        gw.http,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(te_obfuscated.starts_with("HTTP/1.1 400"), "{te_obfuscated}");
    let dots = raw_exchange(
        gw.http,
        b"GET /public/../admin HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(dots.starts_with("HTTP/1.1 400"), "{dots}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(o.hits(), 0, "nothing reached the origin");
    // Identical duplicate Content-Length is legal (RFC 9110 8.6) and forwarded.
    let ok = raw_exchange(
        gw.http,
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        ws.send(m).await.unwrap();
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&simple_config(&[ws_addr], "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.http))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    // KNOWN PINGORA BUG (cloudflare/pingora#946, fix proposed in #947, not
    // released in 0.9.1): when the upstream's 101 is read before the upgrade
    // request's empty body end, Pingora's upstream half takes that end for
    // the end of the tunnel and tears it down; the client's first frame then
    // meets a reset: 1.5–1.9% of connections in this in-process harness
    // (work-stealing runtime, suite load); `cargo run --release -p edgegate
    // --example ws_first_frame -- 2000 [steal]` measures it alone (0 of 2000
    // per-thread, 1 of 2000 work-stealing on an idle box). Until the fix ships, the first frame
    // waits a moment; the steady-state pass-through is what this test proves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echo = ws
            .next()
            .await
            .expect("stream open")
            .unwrap_or_else(|e| panic!("echo {i}: {e:?}"));
        assert_eq!(echo.into_text().unwrap().as_str(), format!("hello {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_upstream_connections_alive() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "")).await;
    let conns = || o.conns.load(std::sync::atomic::Ordering::SeqCst);
    // One client connection is served by one worker thread.
    let one = client();
    for _ in 0..5 {
        assert_eq!(one.get(gw.url("/")).send().await.unwrap().status(), 200);
        // The client has its response before the proxy has put the upstream
        // connection back in the pool (that happens as the request ends);
        // a next request sent in that instant rightly opens a second one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.hits(), 5);
    assert_eq!(conns(), 1, "one pooled upstream connection served all");
    // New client connections land on either worker thread; the relay pools
    // per thread (as nginx workers do), so at most one more opens.
    for _ in 0..6 {
        assert_eq!(
            client().get(gw.url("/")).send().await.unwrap().status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.hits(), 11);
    assert!(conns() <= 2, "{} upstream connections", conns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_counts_requests_by_route_and_status() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "")).await;
    for _ in 0..3 {
        client().get(gw.url("/")).send().await.unwrap();
    }
    // Pingora's `logging` phase runs after the response reached the client:
    // the last request may be counted a moment after its response.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = gw.metrics().await;
        if m.contains("edgegate_requests_total{route=\"all\",status=\"200\"} 3") {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(m.contains("edgegate_request_duration_seconds_count{route=\"all\"} 3"));
    assert!(m.contains("edgegate_requests_in_flight 0"));
    assert!(m.contains("edgegate_config_generation 1"));
    assert!(m.contains("edgegate_upstream_backend_healthy{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_when_enabled() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(
        &simple_config(&[o.addr], "").replace("threads = 2", "threads = 2\nh2c = true"),
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(gw.url("/over-h2c")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["via"], "2 test-pop");
    assert_eq!(o.last().path, "/over-h2c");
    // HTTP/1.1 still works on the same listener.
    assert_eq!(
        client().get(gw.url("/h1")).send().await.unwrap().version(),
        reqwest::Version::HTTP_11
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_beyond_the_parser_cap_are_refused_not_forwarded() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "")).await;
    let mut req = b"GET / HTTP/1.1\r\nHost: a.test\r\n".to_vec();
    for i in 0..600 {
        req.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(2000)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    // Past Pingora's 1 MiB parser cap the request never reaches a route (so
    // no route limit, and no 431): Pingora answers 400 and closes.
    let resp = raw_exchange(gw.http, &req).await;
    assert!(
        resp.starts_with("HTTP/1.1 400"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    assert_eq!(o.hits(), 0);
}
