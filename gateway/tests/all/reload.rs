//! Reload: good configs swap in with no failed request, bad ones change nothing.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn two_route_config(a: std::net::SocketAddr, b: std::net::SocketAddr, beta_to: &str) -> String {
    format!(
        r#"
[pop]
name = "reload-pop"
[server]
threads = 2
[log]
access_log = false
[admin]
listen = "{{admin}}"
[[listeners]]
listen = "{{listen}}"
[upstreams.a]
backends = ["{a}"]
[upstreams.b]
backends = ["{b}"]
[[routes]]
name = "main"
upstream = "a"
[[routes]]
name = "beta"
path_prefix = "/beta"
upstream = "{beta_to}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_reload_swaps_routes_bad_reload_keeps_serving() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Gateway::start(&two_route_config(a.addr, b.addr, "a")).await;
    assert_eq!(
        client()
            .get(gw.url("/beta/x"))
            .send()
            .await
            .unwrap()
            .headers()["x-origin"],
        "a"
    );

    gw.rewrite(&two_route_config(a.addr, b.addr, "b"));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["config_generation"], 2);
    assert_eq!(
        client()
            .get(gw.url("/beta/x"))
            .send()
            .await
            .unwrap()
            .headers()["x-origin"],
        "b"
    );

    // A typo: rejected with file, line, column and key; generation 2 keeps serving.
    gw.rewrite(
        &two_route_config(a.addr, b.addr, "b")
            .replace("name = \"beta\"", "name = \"beta\"\npath_prefx = \"/x\""),
    );
    let r = gw.reload().await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    let err = body["error"].as_str().unwrap();
    assert!(
        err.contains("edgegate.toml:21:1") && err.contains("routes[1].path_prefx"),
        "{err}"
    );
    assert_eq!(body["config_generation"], 2);
    assert_eq!(
        client()
            .get(gw.url("/beta/x"))
            .send()
            .await
            .unwrap()
            .headers()["x-origin"],
        "b"
    );
    let status: serde_json::Value = gw.status().await;
    assert!(status["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("path_prefx"));

    // A route to a group that does not exist: also rejected.
    gw.rewrite(&two_route_config(a.addr, b.addr, "nope"));
    assert_eq!(gw.reload().await.status(), 409);
    // Listener changes need a restart: rejected, not half-applied.
    gw.rewrite(
        &two_route_config(a.addr, b.addr, "b")
            .replace("listen = \"{listen}\"", "listen = \"{listen1}\""),
    );
    let r = gw.reload().await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("restart"));
    assert_eq!(
        client()
            .get(gw.url("/beta/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("edgegate_config_reloads_total{result=\"error\"} 3"),
        "{m}"
    );
    assert!(m.contains("edgegate_config_generation 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let gw = Arc::new(Gateway::start(&two_route_config(a.addr, b.addr, "a")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            // Keep-alive client: reloads must not break reused connections either.
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let path = if w % 2 == 0 { "/beta/x" } else { "/slow/30" };
                match c.get(gw.url(path)).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for i in 0..20 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        gw.rewrite(&two_route_config(a.addr, b.addr, target));
        let r = gw.reload().await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        ok.load(Ordering::SeqCst) > 50,
        "load ran: {} ok",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed across 20 reloads"
    );
    assert_eq!(gw.shared.current().id, 21);
}
