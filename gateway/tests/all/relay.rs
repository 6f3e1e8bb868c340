//! The relay (`proxy::relay`): plain HTTP/1.1 `GET`/`HEAD` requests proxied
//! on edgegate's own path. Each check runs against a gateway with the relay
//! and one without (Pingora's path): what the origin and the client see
//! must match. `edgegate_relayed_total` tells which path answered.

use crate::cache::{Reply, Scripted};
use crate::harness::{simple_config, Gateway, Origin};
use crate::lane::probe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn relayed(gw: &Gateway) -> u64 {
    gw.shared.metrics.relayed.get()
}

async fn pair(backends: &[std::net::SocketAddr], route_extra: &str) -> (Gateway, Gateway) {
    let on = simple_config(backends, route_extra);
    let off = on.replace("[server]\n", "[server]\nrelay = false\n");
    (Gateway::start(&on).await, Gateway::start(&off).await)
}

/// The origin sees the same request from both paths (forwarding fields
/// appended, hop-by-hop fields dropped, the request id kept, `Host` kept),
/// and the client the same answer.
#[tokio::test]
async fn the_relay_sends_and_answers_what_pingora_does() {
    let origin = Origin::start("o").await;
    let (with, without) = pair(&[origin.addr], "").await;
    let raw = b"GET /echo?x=1 HTTP/1.1\r\nHost: relay.test:8080\r\n\
        X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\nVia: 1.0 front\r\n\
        X-Request-Id: rid-1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Custom: v\r\n\
        Accept: */*\r\n\r\n";
    let a = probe(with.http, raw).await;
    let seen_a = origin.last();
    let b = probe(without.http, raw).await;
    let seen_b = origin.last();
    assert_eq!(a, b);
    assert_eq!(seen_a.headers, seen_b.headers);
    assert_eq!(
        (seen_a.method.as_str(), seen_a.path.as_str()),
        ("GET", "/echo")
    );
    let h = &seen_a.headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["host"], "relay.test:8080");
    assert_eq!(h["via"], "1.0 front, 1.1 test-pop");
    assert_eq!(h["x-request-id"], "rid-1");
    assert!(!h.contains_key("proxy-authorization") && !h.contains_key("te"));
    assert_eq!((relayed(&with), relayed(&without)), (1, 0));
}

/// Answers of every framing pass through as Pingora passes them: length,
/// chunked (its data; chunk boundaries are a hop's), none (`HEAD`, `204`,
/// `304`), errors and a large body, on one keep-alive connection each.
#[tokio::test]
async fn answers_of_every_framing_match_pingoras() {
    let origin = Scripted::start().await;
    let big = "b".repeat(200 * 1024);
    origin.set("/len", Reply::ok("no-store", "length"));
    origin.set(
        "/chunked",
        Reply {
            chunked: true,
            ..Reply::ok("no-store", &"c".repeat(3000))
        },
    );
    origin.set("/big", Reply::ok("no-store", &big));
    origin.set(
        "/etag",
        Reply::ok("no-store", "tagged").header("etag", "\"t1\""),
    );
    origin.set(
        "/none",
        Reply {
            status: 204,
            ..Reply::ok("no-store", "")
        },
    );
    origin.set(
        "/missing",
        Reply {
            status: 404,
            ..Reply::ok("no-store", "not here")
        },
    );
    let (with, without) = pair(&[origin.addr], "").await;
    let cases = [
        "GET /len HTTP/1.1\r\nHost: r\r\n\r\n",
        "GET /chunked HTTP/1.1\r\nHost: r\r\n\r\n",
        "HEAD /chunked HTTP/1.1\r\nHost: r\r\n\r\n",
        "GET /big HTTP/1.1\r\nHost: r\r\n\r\n",
        "GET /etag HTTP/1.1\r\nHost: r\r\nIf-None-Match: \"t1\"\r\n\r\n",
        "GET /none HTTP/1.1\r\nHost: r\r\n\r\n",
        "GET /missing HTTP/1.1\r\nHost: r\r\n\r\n",
    ];
    for raw in cases {
        let (a, b) = (
            probe(with.http, raw.as_bytes()).await,
            probe(without.http, raw.as_bytes()).await,
        );
        assert_eq!(a, b, "{raw:?}");
    }
    assert_eq!(relayed(&with), cases.len() as u64);
    assert_eq!(relayed(&without), 0);
}

/// An origin that closes every connection after one answer, without
/// saying so: the relay's pooled connection is stale on the next request,
/// which goes out again on a fresh one, and the client never notices.
#[tokio::test]
async fn a_stale_pooled_connection_is_replaced_unnoticed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // Closed without `Connection: close`.
            });
        }
    });
    let gw = Gateway::start(&simple_config(&[addr], "")).await;
    let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    for _ in 0..3 {
        c.write_all(b"GET /x HTTP/1.1\r\nHost: r\r\n\r\n")
            .await
            .unwrap();
        let got = read_response(&mut c).await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK"));
        assert!(got.ends_with(b"ok"));
        // Let the origin's close arrive before the next request.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(relayed(&gw), 3);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one fresh connection each"
    );
    server.abort();
}

/// An origin that answers the first request on each connection and closes
/// the connection, unanswered, when a second request arrives on it (the
/// race a keep-alive timeout or `keepalive_requests` limit loses): the
/// request met a pooled connection the backend had given up on, not a
/// failing backend, so it goes out again on a new connection to the same
/// backend, on the relay and on Pingora's path alike, even on an upstream
/// group of one backend.
#[tokio::test]
async fn a_pooled_connection_closed_under_a_request_is_retried_on_the_same_backend() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                for answered in [true, false] {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    if answered {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
                // Dropped: closed under the second request.
            });
        }
    });
    for relay in [true, false] {
        let text = simple_config(&[addr], "")
            .replace("[server]\n", &format!("[server]\nrelay = {relay}\n"));
        let gw = Gateway::start(&text).await;
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        for i in 0..4 {
            c.write_all(b"GET /x HTTP/1.1\r\nHost: r\r\n\r\n")
                .await
                .unwrap();
            let got = read_response(&mut c).await;
            assert!(
                got.starts_with(b"HTTP/1.1 200 OK"),
                "relay {relay}, request {i}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    server.abort();
}

/// One whole response (head and `Content-Length` body) from `c`.
async fn read_response(c: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return got;
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the gateway closed the client connection");
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Fields a `Connection` header names are this hop's only (RFC 9110
/// §7.6.1): neither path forwards them, in either direction. (A request
/// whose `Connection` names fields goes to Pingora's path, which drops
/// them; the relay drops those of answers.)
#[tokio::test]
async fn connection_nominated_fields_stay_on_their_hop() {
    let origin = Scripted::start().await;
    origin.set(
        "/nominated",
        Reply::ok("no-store", "body")
            .header("connection", "x-hop-a, X-Hop-B")
            .header("x-hop-a", "1")
            .header("x-hop-b", "2")
            .header("x-kept", "3"),
    );
    let (with, without) = pair(&[origin.addr], "").await;
    let plain = b"GET /nominated HTTP/1.1\r\nHost: r\r\n\r\n";
    let nominating = b"GET /nominated HTTP/1.1\r\nHost: r\r\nConnection: keep-alive, x-req-hop\r\n\
        X-Req-Hop: secret\r\nX-Req-Kept: v\r\n\r\n";
    for gw in [&with, &without] {
        for raw in [&plain[..], &nominating[..]] {
            let answer = probe(gw.http, raw).await.to_ascii_lowercase();
            assert!(answer.starts_with("200 "), "{answer}");
            assert!(answer.contains("x-kept: 3"), "{answer}");
            assert!(
                !answer.contains("x-hop-a") && !answer.contains("x-hop-b"),
                "{answer}"
            );
        }
        let seen = origin.last_headers("/nominated");
        assert_eq!(
            seen.get("x-req-kept").map(|v| v.as_bytes()),
            Some(&b"v"[..])
        );
        assert!(!seen.contains_key("x-req-hop"), "{seen:?}");
    }
    assert_eq!((relayed(&with), relayed(&without)), (1, 0));
}
