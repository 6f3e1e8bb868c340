//! Filters: the real `.wasm` components (built from `filters/`) in the real
//! host, through the gateway.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A config whose `[server]` points at the freshly built components, with
/// `routes` appended after one upstream `app`.
fn filter_config(origin: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[pop]
name = "filter-pop"
[server]
threads = 2
filter_dir = "{dir}"
[log]
access_log = false
[admin]
listen = "{{admin}}"
[[listeners]]
listen = "{{listen}}"
[upstreams.app]
backends = ["{origin}"]
{extra}
"#,
        dir = guest_dir().display()
    )
}

fn wasm(name: &str) -> String {
    guest_dir()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

async fn metrics(gw: &Gateway) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_filter_edits_requests_and_responses_with_templates() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        r#"
[[routes]]
name = "web"
upstream = "app"
[[routes.filters]]
module = "headers"
config.request.set = { "x-edge-pop" = "{pop}", "x-rid" = "{request_id}" }
config.request.remove = ["x-internal-debug"]
config.response.set = { "strict-transport-security" = "max-age=31536000" }
config.response.append = { "x-served-by" = "{pop}/{route}" }
"#,
    ))
    .await;
    let r = client()
        .get(gw.url("/page"))
        .header("x-internal-debug", "1")
        .header("x-request-id", "rid-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.headers()["x-served-by"], "filter-pop/web");
    let seen = o.last();
    assert_eq!(seen.headers["x-edge-pop"], "filter-pop");
    assert_eq!(seen.headers["x-rid"], "rid-7");
    assert!(!seen.headers.contains_key("x-internal-debug"));
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "edgegate_filter_decisions_total{decision=\"edit\",filter=\"headers\",route=\"web\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("edgegate_filter_instantiate_seconds_count{filter=\"headers\"}"));
}

const KEY_A_SHA256: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // "secret"

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_then_rate_limit_by_principal() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        &format!(
            r#"
[rate_limits.per-key]
rate = 1
per = "10s"
burst = 3

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
[[routes.filters]]
module = "api-key"
config.query = "api_key"
config.keys = [{{ sha256 = "{KEY_A_SHA256}", label = "team-a" }}]
[[routes.filters]]
module = "rate-limit"
rate_limits = ["per-key"]
config = {{ bucket = "per-key", key = "principal" }}

[[routes]]
name = "open"
upstream = "app"
"#
        ),
    ))
    .await;
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "ApiKey");
    let r = client()
        .get(gw.url("/api/x"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        o.hits(),
        0,
        "unauthenticated requests never reach the origin"
    );

    for i in 0..3 {
        let r = client()
            .get(gw.url("/api/x"))
            .header("x-api-key", "secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} within the burst");
    }
    let seen = o.last();
    assert_eq!(seen.headers["x-api-key-label"], "team-a");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the key is stripped before the upstream"
    );

    // The same principal through the query parameter shares the bucket.
    let r = client()
        .get(gw.url("/api/x?api_key=secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-key\";q=3;w=30");
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"per-key\";r=0;t="));
    assert_eq!(o.hits(), 3);
    // Other routes are not limited.
    assert_eq!(
        client().get(gw.url("/open")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_by_ip_trusts_forwarded_for_only_from_trusted_proxies() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        r#"
[rate_limits.per-ip]
rate = 1
per = "60s"
burst = 1
[[routes]]
name = "all"
upstream = "app"
[[routes.filters]]
module = "rate-limit"
rate_limits = ["per-ip"]
config = { bucket = "per-ip", key = "ip", trusted_proxies = ["127.0.0.0/8"] }
"#,
    ))
    .await;
    // The peer (127.0.0.1) is trusted, so each distinct client IP has its own bucket.
    for ip in ["203.0.113.1", "203.0.113.2"] {
        let r = client()
            .get(gw.url("/"))
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{ip}");
    }
    let r = client()
        .get(gw.url("/"))
        .header("x-forwarded-for", "203.0.113.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "same client, bucket empty");
    // Right-most untrusted entry counts: a spoofed left entry changes nothing.
    let r = client()
        .get(gw.url("/"))
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

fn bad_filter_config(o: std::net::SocketAddr, fixture: &str, on_error: &str) -> String {
    filter_config(
        o,
        &format!(
            r#"
[[routes]]
name = "bad"
path_prefix = "/bad"
upstream = "app"
[[routes.filters]]
path = "{}"
on_error = "{on_error}"
timeout = "30ms"
memory = "8MiB"

[[routes]]
name = "good"
upstream = "app"
"#,
            wasm(fixture)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_filter_is_stopped_and_other_routes_keep_serving_under_load() {
    let o = Origin::start("o").await;
    let gw = Arc::new(Gateway::start(&bad_filter_config(o.addr, "spin", "fail-closed")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let good_failures = Arc::new(AtomicUsize::new(0));
    let good_ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (gw, stop, failures, ok) = (
            gw.clone(),
            stop.clone(),
            good_failures.clone(),
            good_ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                match c.get(gw.url("/good")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failures.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    let mut spins = Vec::new();
    for _ in 0..4 {
        let gw = gw.clone();
        spins.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = client().get(gw.url("/bad/x")).send().await.unwrap();
            (r.status(), started.elapsed(), r.text().await.unwrap())
        }));
    }
    for s in spins {
        let (status, took, body) = s.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("filter failed"));
        assert!(
            took < Duration::from_secs(5),
            "stopped near its deadline, took {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        good_failures.load(Ordering::SeqCst),
        0,
        "the other route never failed"
    );
    assert!(good_ok.load(Ordering::SeqCst) > 10);
    assert_eq!(
        o.hits(),
        good_ok.load(Ordering::SeqCst),
        "the spinning route never reached the origin"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "edgegate_filter_errors_total{filter=\"spin\",kind=\"timeout\",route=\"bad\"} 4"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_and_panic_fail_closed_then_next_requests_work() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&bad_filter_config(o.addr, "bomb", "fail-closed")).await;
    for _ in 0..3 {
        let r = client().get(gw.url("/bad/x")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(
            client().get(gw.url("/good")).send().await.unwrap().status(),
            200
        );
    }
    let m = metrics(&gw).await;
    assert!(m.contains("kind=\"out_of_memory\",route=\"bad\"} 3"), "{m}");

    let gw = Gateway::start(&bad_filter_config(o.addr, "panic_filter", "fail-closed")).await;
    assert_eq!(
        client()
            .get(gw.url("/bad/panic"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        client()
            .get(gw.url("/bad/fine"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "a fresh instance serves the next request"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "edgegate_filter_errors_total{filter=\"panic_filter\",kind=\"trap\",route=\"bad\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_a_failing_filter() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&bad_filter_config(o.addr, "spin", "fail-open")).await;
    let r = client().get(gw.url("/bad/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(o.hits(), 1);
}

fn load_error(template: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgegate.toml");
    let text = template
        .replace("{listen}", &format!("127.0.0.1:{}", free_port()))
        .replace("{admin}", &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&path, text).unwrap();
    match edgegate::state::Shared::load(
        edgegate::state::ConfigSource::File(path),
        edgegate::state::machine_defaults(),
    ) {
        Ok(_) => panic!("the config loaded"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_components_fail_the_config_load_with_a_clear_error() {
    let origin = "127.0.0.1:9".parse().unwrap();
    let err = load_error(&bad_filter_config(origin, "no_export", "fail-closed"));
    assert!(
        err.contains("does not export the `edgegate:filter/filter` world")
            || err.contains("cannot link"),
        "{err}"
    );
    assert!(err.contains("no_export.wasm"), "{err}");

    let missing = filter_config(
        origin,
        "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\npath = \"/nonexistent/x.wasm\"\n",
    );
    let err = load_error(&missing);
    assert!(err.contains("cannot read /nonexistent/x.wasm"), "{err}");

    // rate-limit imports `edgegate:filter/rate-limit`; without a grant it cannot link.
    let ungranted = filter_config(
        origin,
        "[rate_limits.b]\nrate = 1\n[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\nmodule = \"rate-limit\"\nconfig = { bucket = \"b\" }\n",
    );
    let err = load_error(&ungranted);
    assert!(err.contains("grants it no `rate_limits`"), "{err}");

    // A config the filter rejects fails the load too (its `phases` call traps).
    let bad_cfg = filter_config(
        origin,
        "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\nmodule = \"headers\"\nconfig = { request = { sett = {} } }\n",
    );
    let err = load_error(&bad_cfg);
    assert!(
        err.contains("filter `headers`") && err.contains("phases"),
        "{err}"
    );

    let not_a_component = tempfile::NamedTempFile::with_suffix(".wasm").unwrap();
    std::fs::write(not_a_component.path(), b"\0asm garbage").unwrap();
    let err = load_error(&filter_config(
        origin,
        &format!(
            "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\npath = \"{}\"\n",
            not_a_component.path().display()
        ),
    ));
    assert!(err.contains("not a valid component"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_reload_applies_new_config_and_rejects_a_bad_component() {
    let o = Origin::start("o").await;
    let cfg = |value: &str, path: &str| {
        filter_config(
            o.addr,
            &format!(
                "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\npath = \"{path}\"\nname = \"h\"\nconfig.response.set = {{ \"x-version\" = \"{value}\" }}\n"
            ),
        )
    };
    let gw = Gateway::start(&cfg("one", &wasm("headers"))).await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().headers()["x-version"],
        "one"
    );
    gw.rewrite(&cfg("two", &wasm("headers")));
    assert_eq!(
        client()
            .post(gw.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().headers()["x-version"],
        "two"
    );
    gw.rewrite(&cfg("three", &wasm("no_export")));
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("no_export.wasm"));
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().headers()["x-version"],
        "two",
        "old generation serves"
    );
}
