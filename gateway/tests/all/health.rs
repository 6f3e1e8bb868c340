//! Active health checks, readiness and drain.

use crate::harness::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn checked_config(backends: &[std::net::SocketAddr]) -> String {
    simple_config(backends, "").replace(
        "[[routes]]",
        "[upstreams.app.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\ntimeout = \"500ms\"\n\n[[routes]]",
    )
}

async fn backend_state(gw: &Gateway) -> Vec<serde_json::Value> {
    let status: serde_json::Value = gw.status().await;
    status["upstreams"]["app"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_check_marks_backends_down_and_up_and_readyz_follows() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&checked_config(&[a.addr, b.addr])).await;
    gw.wait_ready_status(200).await;

    // One backend fails its checks: traffic avoids it, readiness stays.
    a.health_status.store(503, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_state(&gw).await[0]["active_healthy"] != false {
        assert!(Instant::now() < deadline, "backend a never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = a.hits();
    for _ in 0..6 {
        assert_eq!(
            client().get(gw.url("/")).send().await.unwrap().headers()["x-origin"],
            "b"
        );
    }
    assert_eq!(a.hits(), before, "a down backend gets no traffic");
    gw.wait_ready_status(200).await;

    // Both down: not ready, and the JSON says why.
    b.health_status.store(500, Ordering::SeqCst);
    gw.wait_ready_status(503).await;
    let body: serde_json::Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no healthy backend"),
        "{body}"
    );
    let m = gw.metrics().await;
    assert!(m.contains(&format!(
        "edgegate_upstream_backend_healthy{{backend=\"{}\",upstream=\"app\"}} 0",
        b.addr
    )));

    // Recovery after `healthy_threshold` passes.
    a.health_status.store(200, Ordering::SeqCst);
    b.health_status.store(200, Ordering::SeqCst);
    gw.wait_ready_status(200).await;
    let states = backend_state(&gw).await;
    assert!(
        states.iter().all(|s| s["active_healthy"] == true),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_an_upstream_group_is_unreachable() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&checked_config(&[dead])).await;
    gw.wait_ready_status(503).await;
    let body: serde_json::Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        body["reasons"].to_string().contains("upstream `app`"),
        "{body}"
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "liveness is separate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_fails_readyz_at_once_keeps_serving_then_shuts_down() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(
        &simple_config(&[o.addr], "").replace("drain_window = \"1s\"", "drain_window = \"1500ms\""),
    )
    .await;
    gw.wait_ready_status(200).await;
    let r = client()
        .post(gw.admin_url("/admin/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started = Instant::now();
    // readyz turns 503 immediately...
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("draining"));
    // ...while traffic is still served during the window.
    while started.elapsed() < Duration::from_millis(1000) {
        assert_eq!(
            client().get(gw.url("/")).send().await.unwrap().status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!gw.exited(), "still up inside the drain window");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.exited() {
        assert!(
            Instant::now() < deadline,
            "gateway did not shut down after the drain window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        tokio::net::TcpStream::connect(gw.http).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_separate_from_public_listeners() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&simple_config(&[o.addr], "")).await;
    // The public listener proxies /healthz to the origin, it does not answer it.
    let r = client().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(r.headers()["x-origin"], "o");
    let r = client()
        .get(gw.admin_url("/admin/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "drain is POST only");
    let status: serde_json::Value = gw.status().await;
    assert_eq!(status["pop"], "test-pop");
    assert_eq!(status["config_generation"], 1);
    assert!(status["version"].is_string() && status["uptime_seconds"].is_number());
}
