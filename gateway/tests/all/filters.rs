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
    let m = gw.metrics().await;
    assert!(
        m.contains(
            "edgegate_filter_decisions_total{decision=\"edit\",filter=\"headers\",route=\"web\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("edgegate_filter_instantiate_seconds_count{filter=\"headers\"}"));
    assert!(
        m.contains("edgegate_filter_memory_peak_bytes_count{filter=\"headers\"} 2"),
        "{m}"
    );
}

const KEY_A_SHA256: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"; // "secret"
const KEY_B_SHA256: &str = "9c0ee26e4a1fbb028187486a7ea91f81f8ab81fcf467cba75107dbd3a64244d7"; // "other-secret"

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

/// Each filter sees the request as the filters before it left it: the host
/// rebuilds the guests' view after an edit (and only then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_filter_sees_an_earlier_filters_request_edits() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        &format!(
            r#"
[[routes]]
name = "keyed"
path_prefix = "/keyed"
upstream = "app"
[[routes.filters]]
module = "noop"
[[routes.filters]]
module = "headers"
config.request.set = {{ "x-api-key" = "secret" }}
[[routes.filters]]
module = "noop"
name = "noop-again"
[[routes.filters]]
module = "api-key"
config.keys = [{{ sha256 = "{KEY_A_SHA256}", label = "team-a" }}]

[[routes]]
name = "bare"
path_prefix = "/bare"
upstream = "app"
[[routes.filters]]
module = "api-key"
config.keys = [{{ sha256 = "{KEY_A_SHA256}", label = "team-a" }}]
"#
        ),
    ))
    .await;
    let r = client().get(gw.url("/bare/x")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no key, no entry");
    let r = client()
        .get(gw.url("/keyed/x"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "api-key checked the key the headers filter set, after a no-op in between"
    );
    assert_eq!(o.hits(), 1);
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
    // The bomb must reach its memory cap, not the CPU deadline, even on a
    // loaded machine; the spinner is meant to hit the deadline.
    let timeout = if fixture == "bomb" { "5s" } else { "30ms" };
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
timeout = "{timeout}"
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
    let m = gw.metrics().await;
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
    let m = gw.metrics().await;
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
    let m = gw.metrics().await;
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
    let [p_listen, p_admin] = free_ports::<2>();
    let text = template
        .replace("{listen}", &format!("127.0.0.1:{p_listen}"))
        .replace("{admin}", &format!("127.0.0.1:{p_admin}"));
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

    // Built against a contract version this gateway does not run: said so,
    // with both versions, rather than as a missing import.
    let err = load_error(&bad_filter_config(origin, "old_contract", "fail-closed"));
    assert!(
        err.contains("built against `edgegate:filter@0.1.0`")
            && err.contains("`edgegate:filter@0.2.0`")
            && err.contains("old_contract.wasm"),
        "{err}"
    );

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
    assert_eq!(gw.reload().await.status(), 200);
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().headers()["x-version"],
        "two"
    );
    gw.rewrite(&cfg("three", &wasm("no_export")));
    let r = gw.reload().await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("no_export.wasm"));
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().headers()["x-version"],
        "two",
        "old generation serves"
    );
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed JWT: `sign` gets the signing input and returns the signature.
fn jwt(
    header: serde_json::Value,
    claims: serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

const SECRET: &[u8] = b"edgegate-example-secret";

fn hs256(input: &[u8]) -> Vec<u8> {
    ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET),
        input,
    )
    .as_ref()
    .to_vec()
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"sub": sub, "iss": "edgegate-example", "aud": "edgegate-api", "exp": now() + 300})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_hs256_and_es256_with_claims_checks() {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = ec.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
        "x": b64url(&point[1..33]), "y": b64url(&point[33..])}]});
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let gw = Gateway::start(&filter_config(
        o.addr,
        &format!(
            r#"
[key_sets.shared]
hmac_secrets = {{ example = "edgegate-example-secret" }}
[key_sets.idp]
jwks_file = "{jwks}"

[[routes]]
name = "hs"
path_prefix = "/hs"
upstream = "app"
[[routes.filters]]
module = "jwt-auth"
key_sets = ["shared"]
config = {{ key_set = "shared", algorithms = ["HS256"], issuer = "edgegate-example", audience = "edgegate-api", required_claims = ["sub", "exp"], forward_claims = {{ sub = "x-user-id" }} }}

[[routes]]
name = "es"
path_prefix = "/es"
upstream = "app"
[[routes.filters]]
module = "jwt-auth"
key_sets = ["idp"]
config = {{ key_set = "idp", algorithms = ["ES256"], leeway_seconds = 0 }}
"#,
            jwks = jwks_path.display()
        ),
    ))
    .await;
    let get = |path: &str, token: Option<String>| {
        let mut r = client().get(gw.url(path)).header("x-user-id", "spoofed");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    let r = get("/hs/a", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"edgegate\"");

    let hs_header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "example"});
    let r = get(
        "/hs/a",
        Some(jwt(hs_header.clone(), claims("alice"), hs256)),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        o.last().headers["x-user-id"],
        "alice",
        "claim forwarded, spoofed value replaced"
    );

    let cases: Vec<(String, &str)> = vec![
        (
            jwt(serde_json::json!({"alg": "none"}), claims("a"), |_| {
                Vec::new()
            }),
            "algorithm not allowed",
        ),
        (
            jwt(
                serde_json::json!({"alg": "HS384", "kid": "example"}),
                claims("a"),
                |i| {
                    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA384, SECRET), i)
                        .as_ref()
                        .to_vec()
                },
            ),
            "algorithm not allowed",
        ),
        (
            jwt(hs_header.clone(), claims("a"), |_| vec![0u8; 32]),
            "invalid signature",
        ),
        (
            jwt(
                hs_header.clone(),
                serde_json::json!({"sub": "a", "iss": "edgegate-example", "aud": "edgegate-api", "exp": now() - 100}),
                hs256,
            ),
            "token expired",
        ),
        (
            jwt(
                hs_header.clone(),
                serde_json::json!({"sub": "a", "iss": "edgegate-example", "aud": "edgegate-api", "exp": now() + 300, "nbf": now() + 200}),
                hs256,
            ),
            "token not yet valid",
        ),
        (
            jwt(
                hs_header.clone(),
                serde_json::json!({"sub": "a", "iss": "evil", "aud": "edgegate-api", "exp": now() + 300}),
                hs256,
            ),
            "wrong issuer",
        ),
        (
            jwt(
                hs_header.clone(),
                serde_json::json!({"sub": "a", "iss": "edgegate-example", "aud": ["other"], "exp": now() + 300}),
                hs256,
            ),
            "wrong audience",
        ),
        (
            jwt(
                hs_header.clone(),
                serde_json::json!({"iss": "edgegate-example", "aud": "edgegate-api", "exp": now() + 300}),
                hs256,
            ),
            "missing required claim",
        ),
        ("not.a-token".to_string(), "malformed token"),
    ];
    for (token, why) in cases {
        let r = get("/hs/a", Some(token)).await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains(why), "{why}: {challenge}");
    }

    let es = |kid: &str| {
        jwt(
            serde_json::json!({"alg": "ES256", "kid": kid}),
            serde_json::json!({"sub": "bob", "exp": now() + 60}),
            |i| {
                ec.sign(&ring::rand::SystemRandom::new(), i)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            },
        )
    };
    assert_eq!(get("/es/b", Some(es("ec-1"))).await.unwrap().status(), 200);
    let r = get("/es/b", Some(es("rotated-away"))).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("unknown key"));
    // An HS256 token against the ES256 route is refused (algorithm pinning).
    assert_eq!(
        get("/es/b", Some(jwt(hs_header, claims("x"), hs256)))
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_ratelimit_example_runs_as_shipped() {
    let o = Origin::start("o").await;
    let repo = repo();
    let example =
        std::fs::read_to_string(repo.join("policies/examples/auth-ratelimit.toml")).unwrap();
    // Only the addresses change: free ports instead of the documented ones.
    let text = example
        .replace("127.0.0.1:9901", "{admin}")
        .replace("127.0.0.1:8080", "{listen}")
        .replace("127.0.0.1:9000", &o.addr.to_string());
    let gw = Gateway::start(&text).await;
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200,
        "/ is open"
    );
    assert_eq!(
        client()
            .get(gw.url("/api/items"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let token = |sub: &str| {
        jwt(
            serde_json::json!({"alg": "HS256", "typ": "JWT"}),
            claims(sub),
            hs256,
        )
    };
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(
                client()
                    .get(gw.url("/api/items"))
                    .bearer_auth(token("carol"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert_eq!(statuses[5], 429, "burst 5 per user: {statuses:?}");
    assert_eq!(
        client()
            .get(gw.url("/api/items"))
            .bearer_auth(token("dave"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "other users have their own bucket"
    );
    assert_eq!(o.last().headers["x-user-id"], "dave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_component_file_reloads_it() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("tenant.wasm");
    std::fs::copy(guest_dir().join("noop.wasm"), &component).unwrap();
    let gw = Gateway::start_in(
        dir,
        &filter_config(o.addr, "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\npath = \"tenant.wasm\"\n"),
    )
    .await;
    assert_eq!(
        client()
            .get(gw.url("/x/panic"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Swap in a component that panics on `/panic`: picked up without SIGHUP.
    let tmp = gw.dir.path().join("tenant.wasm.new");
    std::fs::copy(guest_dir().join("panic_filter.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, &component).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client()
            .get(gw.url("/x/panic"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new component was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.shared.current().id, 2);
}

#[test]
fn precompiled_components_are_cached_on_disk_by_content_hash() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A copy with one extra custom section: new content, so a new cache entry
    // even though the engine compiled the original earlier in this process.
    let mut bytes = std::fs::read(guest_dir().join("noop.wasm")).unwrap();
    bytes.extend_from_slice(&[0, 9, 8, b'c', b'a', b'c', b'h', b'e', b'-', b't', 1]);
    let component = dir.path().join("tenant.wasm");
    std::fs::write(&component, &bytes).unwrap();
    let [p_listen, p_admin] = free_ports::<2>();
    let config = filter_config("127.0.0.1:9".parse().unwrap(), "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\npath = \"tenant.wasm\"\n")
        .replace("[server]\n", &format!("[server]\nfilter_cache_dir = \"{}\"\n", cache.path().display()))
        .replace("{listen}", &format!("127.0.0.1:{p_listen}"))
        .replace("{admin}", &format!("127.0.0.1:{p_admin}"));
    let path = dir.path().join("edgegate.toml");
    std::fs::write(&path, config).unwrap();
    let load = || {
        edgegate::state::Shared::load(
            edgegate::state::ConfigSource::File(path.clone()),
            edgegate::state::machine_defaults(),
        )
        .unwrap()
    };
    drop(load());
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let name = artifacts[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(name.ends_with(".cwasm") && name.len() > 64, "{name}");
    let written = std::fs::metadata(&artifacts[0])
        .unwrap()
        .modified()
        .unwrap();
    drop(load());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
    assert_eq!(
        std::fs::metadata(&artifacts[0])
            .unwrap()
            .modified()
            .unwrap(),
        written,
        "reused, not rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_config_file_is_merged_and_watched() {
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "keys = []\n").unwrap();
    let gw = Gateway::start_in(
        dir,
        &filter_config(
            o.addr,
            "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\nmodule = \"api-key\"\nconfig = { header = \"x-key\" }\nconfig_file = \"keys.toml\"\n",
        ),
    )
    .await;
    assert_eq!(
        client()
            .get(gw.url("/"))
            .header("x-key", "secret")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Add the key in the file: picked up without a reload command.
    let tmp = gw.dir.path().join("keys.toml.new");
    std::fs::write(
        &tmp,
        format!("keys = [{{ sha256 = \"{KEY_A_SHA256}\", label = \"from-file\" }}]\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &keys).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client()
        .get(gw.url("/"))
        .header("x-key", "secret")
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the config file change was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(o.last().headers["x-api-key-label"], "from-file");
    assert!(
        !o.last().headers.contains_key("x-key"),
        "the inline `header` setting still applies"
    );
}

/// A JWKS endpoint whose answer the test changes: (document, status).
async fn jwks_server(state: Arc<std::sync::Mutex<(String, u16)>>) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let (body, status) = state.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn ec_key() -> (ring::signature::EcdsaKeyPair, serde_json::Value) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let p = key.public_key().as_ref().to_vec();
    (
        key,
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64url(&p[1..33]), "y": b64url(&p[33..])}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_rotation_and_stale_on_error() {
    let o = Origin::start("o").await;
    let (key_a, mut jwk_a) = ec_key();
    let (key_b, mut jwk_b) = ec_key();
    jwk_a["kid"] = "a".into();
    jwk_b["kid"] = "b".into();
    let state = Arc::new(std::sync::Mutex::new((
        serde_json::json!({"keys": [jwk_a]}).to_string(),
        200,
    )));
    let jwks = jwks_server(state.clone()).await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        &format!(
            r#"
[key_sets.idp]
jwks_url = "http://{jwks}/.well-known/jwks.json"
refresh = "300ms"
[[routes]]
name = "r"
upstream = "app"
[[routes.filters]]
module = "jwt-auth"
key_sets = ["idp"]
config = {{ key_set = "idp", algorithms = ["ES256"] }}
"#
        ),
    ))
    .await;
    let token = |key: &ring::signature::EcdsaKeyPair, kid: &str| {
        jwt(
            serde_json::json!({"alg": "ES256", "kid": kid}),
            serde_json::json!({"sub": "s", "exp": now() + 60}),
            |i| {
                key.sign(&ring::rand::SystemRandom::new(), i)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            },
        )
    };
    let status = |t: String| {
        let url = gw.url("/x");
        async move {
            client()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    gw.wait_ready_status(200).await;
    assert_eq!(status(token(&key_a, "a")).await, 200, "fetched at load");
    assert_eq!(status(token(&key_b, "b")).await, 401, "b not published yet");

    // Rotation: the IdP publishes b and retires a.
    state.lock().unwrap().0 = serde_json::json!({"keys": [jwk_b]}).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(token(&key_b, "b")).await != 200 {
        assert!(Instant::now() < deadline, "the refreshed JWKS was not used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(token(&key_a, "a")).await, 401, "retired key refused");

    // The IdP fails: the last good keys keep serving.
    state.lock().unwrap().1 = 500;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status(token(&key_b, "b")).await,
        200,
        "stale keys serve while refreshes fail"
    );
    gw.wait_ready_status(200).await;
}

#[test]
fn an_unreachable_jwks_url_leaves_the_gateway_unready_not_broken() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let o = Origin::start("o").await;
        let dead = free_port();
        let gw = Gateway::start(&filter_config(
            o.addr,
            &format!(
                "[key_sets.idp]\njwks_url = \"http://127.0.0.1:{dead}/jwks\"\n[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\nmodule = \"jwt-auth\"\nkey_sets = [\"idp\"]\nconfig = {{ key_set = \"idp\", algorithms = [\"ES256\"] }}\n"
            ),
        ))
        .await;
        let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("key set `idp`: JWKS not fetched yet"));
        let (key, _) = ec_key();
        let t = jwt(serde_json::json!({"alg": "ES256", "kid": "x"}), serde_json::json!({"exp": now() + 60}), |i| {
            key.sign(&ring::rand::SystemRandom::new(), i).unwrap().as_ref().to_vec()
        });
        let r = client().get(gw.url("/x")).bearer_auth(t).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("keys unavailable"));
    });
}

/// Every first-party filter is exercised through the gateway by a test here
/// (wasmtime's `assert_test_exists` idea): adding a filter without a test fails.
#[test]
fn every_first_party_filter_has_a_gateway_test() {
    let tests = include_str!("filters.rs");
    for module in edgegate::filter_host::embedded_modules() {
        assert!(
            tests.contains(&format!("module = \"{module}\""))
                || tests.contains(&format!("module = \\\"{module}\\\"")),
            "first-party filter `{module}` has no test in tests/all/filters.rs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_filter_passes_requests_and_is_counted() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        "[[routes]]\nname = \"r\"\nupstream = \"app\"\n[[routes.filters]]\nmodule = \"noop\"\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            client().get(gw.url("/")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(o.hits(), 3);
    let m = gw.metrics().await;
    assert!(
        m.contains(
            "edgegate_filter_decisions_total{decision=\"continue\",filter=\"noop\",route=\"r\"} 3"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_guard_the_cache_shape_what_is_stored_and_add_to_its_key() {
    let o = Origin::start("o").await;
    let gw = Gateway::start(&filter_config(
        o.addr,
        &format!(
            r#"
[[routes]]
name = "cached"
upstream = "app"
[routes.cache]
default_ttl = "60s"
[[routes.filters]]
module = "api-key"
config.keys = [{{ sha256 = "{KEY_A_SHA256}", label = "team-a" }}, {{ sha256 = "{KEY_B_SHA256}", label = "team-b" }}]
[[routes.filters]]
module = "headers"
config.cache_key = ["{{principal}}"]
config.response.set = {{ "x-shaped" = "{{principal}}" }}
"#
        ),
    ))
    .await;
    let get = |key: Option<&'static str>| {
        let mut rb = client().get(gw.url("/page"));
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        async move {
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let shaped = r
                .headers()
                .get("x-shaped")
                .map(|v| v.to_str().unwrap().to_string());
            let cs = r
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status, shaped, cs)
        }
    };
    let (s, shaped, cs) = get(Some("secret")).await;
    assert_eq!((s, shaped.as_deref()), (200, Some("team-a")));
    assert!(cs.contains("fwd=uri-miss"), "{cs}");
    let (_, shaped, cs) = get(Some("secret")).await;
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(
        shaped.as_deref(),
        Some("team-a"),
        "the response filter ran before the store"
    );
    let (_, shaped, cs) = get(Some("other-secret")).await;
    assert!(
        cs.contains("uri-miss"),
        "another principal, another key: {cs}"
    );
    assert_eq!(shaped.as_deref(), Some("team-b"));
    assert_eq!(o.hits(), 2);
    // Auth runs before the lookup: cached content stays guarded.
    let (s, _, _) = get(None).await;
    assert_eq!(s, 401);
    assert_eq!(o.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_filters_transform_whole_responses_and_the_cache_keeps_the_result() {
    use crate::cache::{Reply, Scripted};
    let origin = Scripted::start().await;
    origin.set("/t/hello", Reply::ok("max-age=60", "hello"));
    origin.set("/t/reject", Reply::ok("max-age=60", "reject"));
    origin.set("/t/panic", Reply::ok("", "panic"));
    origin.set("/t/big", Reply::ok("", &"b".repeat(3 << 20)));
    origin.set(
        "/t/json",
        Reply::ok("max-age=60", "{}").header("content-type", "application/json"),
    );
    let gw = Gateway::start(&filter_config(
        origin.addr,
        &format!(
            r#"
[[routes]]
name = "shout"
path_prefix = "/t"
upstream = "app"
[routes.cache]
[[routes.filters]]
path = "{}"
memory = "4MiB"
timeout = "2s"
"#,
            wasm("body_upper")
        ),
    ))
    .await;
    let get = |path: &'static str| {
        let url = gw.url(path);
        async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let h = r.headers().clone();
            (status, h, r.text().await.unwrap())
        }
    };
    let (s, h, body) = get("/t/hello?shout=1").await;
    assert_eq!((s, body.as_str()), (200, "HELLO"));
    assert_eq!(h["x-transformed"], "upper");
    assert_eq!(h["content-length"], "5");
    assert!(
        h["cache-status"].to_str().unwrap().contains("stored"),
        "{h:?}"
    );
    assert_eq!(
        origin.last_headers("/t/hello?shout=1")["via"],
        "1.1 filter-pop"
    );
    let (_, h, body) = get("/t/hello?shout=1").await;
    assert_eq!(body, "HELLO", "the transformed variant is what was cached");
    assert!(h["cache-status"].to_str().unwrap().contains("hit"), "{h:?}");
    assert_eq!(origin.hits("/t/hello?shout=1"), 1);
    let r = client()
        .head(gw.url("/t/hello?shout=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-length"], "5");

    let (_, h, body) = get("/t/hello").await;
    assert_eq!(body, "hello", "untouched without the option");
    assert!(!h.contains_key("x-transformed"));
    let (_, _, body) = get("/t/json?shout=1").await;
    assert_eq!(body, "{}", "not text: passed through");

    let (s, _, body) = get("/t/reject?shout=1").await;
    assert_eq!((s, body.as_str()), (422, "rejected\n"));
    let (s, _, _) = get("/t/panic?shout=1").await;
    assert_eq!(s, 503, "a trapping body filter fails closed");
    // A body bigger than the filter's initial memory makes its call grow
    // the memory, and the metric says so (the calls above did not).
    let grows = r#"edgegate_filter_memory_grows_total{filter="body_upper",route="shout"}"#;
    assert!(gw.metrics().await.contains(&format!("{grows} 0")));
    origin.set("/t/medium", Reply::ok("", &"m".repeat(256 << 10)));
    let (s, _, body) = get("/t/medium?shout=1").await;
    assert_eq!((s, body.len()), (200, 256 << 10));
    assert!(body.bytes().all(|b| b == b'M'));
    assert!(gw.metrics().await.contains(&format!("{grows} 1")));
    let (s, _, body) = get("/t/big?shout=1").await;
    assert_eq!(s, 413, "{body}");
    let (s, _, body) = get("/t/hello?shout=2").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "HELLO"),
        "the gateway still serves"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains(
            r#"edgegate_filter_errors_total{filter="body_upper",kind="trap",route="shout"} 1"#
        ),
        "{m}"
    );
}

mod images {
    use super::*;
    use crate::cache::{Reply, Scripted};
    use image::ImageEncoder;

    pub fn jpeg(w: u32, h: u32, quality: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn png_with_alpha(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbaImage::from_fn(w, h, |x, _| image::Rgba([200, 30, 30, (x % 256) as u8]));
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        out
    }

    /// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6).
    fn jpeg_with_orientation_6(w: u32, h: u32) -> Vec<u8> {
        let plain = jpeg(w, h, 85);
        let mut tiff = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut out = plain[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((tiff.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&tiff);
        out.extend_from_slice(&plain[2..]);
        out
    }

    fn image_reply(body: Vec<u8>, content_type: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("cache-control".into(), "public, max-age=3600".into()),
                ("etag".into(), "\"original\"".into()),
            ],
            body,
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    struct Got {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    }

    impl Got {
        fn dims(&self) -> (u32, u32) {
            let img = image::load_from_memory(&self.body).expect("an image");
            (img.width(), img.height())
        }
        fn h(&self, name: &str) -> &str {
            self.headers.get(name).map_or("", |v| v.to_str().unwrap())
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    async fn get(gw: &Gateway, path: &str, accept: Option<&str>) -> Got {
        let mut rb = client().get(gw.url(path));
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        let r = rb.send().await.unwrap();
        Got {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        }
    }

    async fn setup() -> (Scripted, Gateway, Vec<u8>) {
        let origin = Scripted::start().await;
        let photo = jpeg(800, 600, 90);
        origin.set("/img/photo.jpg", image_reply(photo.clone(), "image/jpeg"));
        origin.set(
            "/signed/photo.jpg",
            image_reply(photo.clone(), "image/jpeg"),
        );
        origin.set(
            "/img/logo.png",
            image_reply(png_with_alpha(200, 100), "image/png"),
        );
        origin.set(
            "/img/rotated.jpg",
            image_reply(jpeg_with_orientation_6(300, 200), "image/jpeg"),
        );
        origin.set(
            "/img/big.jpg",
            image_reply(jpeg(1200, 1000, 50), "image/jpeg"),
        );
        let mut padded = jpeg(64, 64, 80);
        padded.extend(std::iter::repeat_n(0u8, 150_000));
        origin.set("/img/large.jpg", image_reply(padded, "image/jpeg"));
        let mut corrupt = photo.clone();
        corrupt.truncate(600);
        origin.set("/img/corrupt.jpg", image_reply(corrupt, "image/jpeg"));
        origin.set(
            "/img/anim.gif",
            image_reply(b"GIF89a\x01\0\x01\0".to_vec(), "image/gif"),
        );
        origin.set(
            "/img/page.html",
            Reply::ok("max-age=60", "<html></html>").header("content-type", "text/html"),
        );
        let gw = Gateway::start(&filter_config(
            origin.addr,
            r#"
[[routes]]
name = "images"
path_prefix = "/img"
upstream = "app"
[routes.cache]
vary_ignore = ["accept"]
[[routes.filters]]
module = "image-transform"
timeout = "5s"
memory = "128MiB"
config = { max_input_bytes = 100000, max_source_pixels = 1000000, max_dimension = 2000 }

[[routes]]
name = "signed"
path_prefix = "/signed"
upstream = "app"
[[routes.filters]]
module = "image-transform"
timeout = "5s"
memory = "64MiB"
config = { signing_keys = ["previous-key-0123456789", "current-key-0123456789"] }
"#,
        ))
        .await;
        (origin, gw, photo)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_transform_resizes_negotiates_and_caches_variants() {
        let (origin, gw, photo) = setup().await;
        let r = get(&gw, "/img/photo.jpg?width=400&quality=80", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.h("content-type"), "image/jpeg");
        assert_eq!(r.dims(), (400, 300));
        assert!(
            r.h("cache-status").contains("stored"),
            "{}",
            r.h("cache-status")
        );
        assert_eq!(
            r.h("cache-control"),
            "public, max-age=3600",
            "origin caching carries over"
        );
        assert!(
            r.h("etag").is_empty(),
            "the original's ETag is not the variant's"
        );
        assert!(
            origin.hits("/img/photo.jpg") == 1,
            "the origin is asked for the image without the options"
        );
        let again = get(&gw, "/img/photo.jpg?quality=80&width=400", None).await;
        assert!(
            again.h("cache-status").contains("hit"),
            "same options, other order: {}",
            again.h("cache-status")
        );
        assert_eq!(again.body, r.body);
        assert_eq!(origin.hits("/img/photo.jpg"), 1);

        let untouched = get(&gw, "/img/photo.jpg", None).await;
        assert_eq!(untouched.body, photo, "no options: passed through");

        // format=auto: webp for a PNG when accepted, with Vary; each variant cached.
        let webp = get(
            &gw,
            "/img/logo.png?width=100&format=auto",
            Some("image/webp,*/*"),
        )
        .await;
        assert_eq!(webp.h("content-type"), "image/webp");
        assert_eq!(webp.h("vary"), "Accept");
        assert_eq!(webp.dims(), (100, 50));
        let png = get(
            &gw,
            "/img/logo.png?width=100&format=auto",
            Some("image/png"),
        )
        .await;
        assert_eq!(png.h("content-type"), "image/png");
        // Another browser's Accept that also takes WebP: the same variant
        // (`vary_ignore = ["accept"]`: the filter's key part holds the
        // negotiated format), while `Vary: Accept` still goes to clients.
        let webp2 = get(
            &gw,
            "/img/logo.png?width=100&format=auto",
            Some("image/avif,image/webp"),
        )
        .await;
        assert_eq!(webp2.h("vary"), "Accept");
        assert!(
            webp2.h("cache-status").contains("hit"),
            "{}",
            webp2.h("cache-status")
        );
        assert_eq!(webp2.h("content-type"), "image/webp");
        assert_eq!(origin.hits("/img/logo.png"), 2, "one fetch per variant");

        for (q, dims) in [
            ("width=100&height=100&fit=cover", (100, 100)),
            ("width=100&height=100&fit=crop&gravity=top-left", (100, 100)),
            ("width=100&height=100&fit=pad", (100, 100)),
            ("width=100&height=100", (100, 75)),
            ("width=100&height=100&fit=contain", (100, 75)),
            ("width=100&dpr=2", (200, 150)),
            ("width=100&rotate=90", (100, 133)),
            ("height=60&format=png", (80, 60)),
            ("width=100&format=webp", (100, 75)),
        ] {
            let r = get(&gw, &format!("/img/photo.jpg?{q}"), None).await;
            assert_eq!(r.status, 200, "{q}: {}", r.text());
            assert_eq!(r.dims(), dims, "{q}");
        }
        // EXIF orientation 6: a 300x200 sensor image displays as 200x300.
        let r = get(&gw, "/img/rotated.jpg?width=100", None).await;
        assert_eq!(r.dims(), (100, 150));
        // Per-filter peak memory: decoding took megabytes of linear memory.
        let m = gw.metrics().await;
        let sum: f64 = m
            .lines()
            .find_map(|l| {
                l.strip_prefix("edgegate_filter_memory_peak_bytes_sum{filter=\"image-transform\"} ")
            })
            .expect("peak memory is reported")
            .parse()
            .unwrap();
        assert!(sum > 4e6, "{sum}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn image_transform_guards_and_signed_urls() {
        let (_origin, gw, _) = setup().await;
        let r = get(&gw, "/img/photo.jpg?width=400&blur=2", None).await;
        assert_eq!(r.status, 400);
        assert!(r.text().contains("unknown option `blur`"), "{}", r.text());
        let r = get(&gw, "/img/photo.jpg?width=999999", None).await;
        assert_eq!(r.status, 400);
        assert!(r.text().contains("`width`"));
        let r = get(&gw, "/img/big.jpg?width=100", None).await;
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains("pixels"));
        let r = get(&gw, "/img/large.jpg?width=10", None).await;
        assert_eq!(r.status, 413, "{}", r.text());
        let r = get(&gw, "/img/corrupt.jpg?width=10", None).await;
        assert_eq!(r.status, 502, "{}", r.text());
        let r = get(&gw, "/img/anim.gif?width=10", None).await;
        assert_eq!(r.status, 415, "{}", r.text());
        let r = get(&gw, "/img/page.html?width=10", None).await;
        assert_eq!((r.status, r.text().as_str()), (200, "<html></html>"));
        // The gateway keeps serving after all that.
        assert_eq!(get(&gw, "/img/photo.jpg?width=50", None).await.status, 200);

        // Signed URLs: HMAC-SHA256 over PATH?CANONICAL_OPTIONS, either key.
        let sign = |key: &str, msg: &str| {
            use base64::Engine as _;
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ring::hmac::sign(&k, msg.as_bytes()))
        };
        let msg = "/signed/photo.jpg?width=100";
        assert_eq!(
            get(&gw, "/signed/photo.jpg?width=100", None).await.status,
            403
        );
        let bad = sign("someone-else-0123456789", msg);
        assert_eq!(
            get(&gw, &format!("/signed/photo.jpg?width=100&sig={bad}"), None)
                .await
                .status,
            403
        );
        for key in ["previous-key-0123456789", "current-key-0123456789"] {
            let sig = sign(key, msg);
            let r = get(&gw, &format!("/signed/photo.jpg?width=100&sig={sig}"), None).await;
            assert_eq!(r.status, 200, "{key}: {}", r.text());
            assert_eq!(r.dims(), (100, 75));
        }
        let sig = sign("current-key-0123456789", msg);
        assert_eq!(
            get(&gw, &format!("/signed/photo.jpg?width=101&sig={sig}"), None)
                .await
                .status,
            403,
            "the signature covers the options"
        );
    }
}

/// The value of the sample named exactly `series` in a metrics text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Recycled instances (`server.filter_recycling`, the default) are reset
/// between calls: a guest that keeps a counter in a static, the previous
/// request's secret on its heap, and scans its whole memory for other
/// requests' secrets finds nothing, request after request, while the
/// metrics show the calls did run in reused instances. What the guest's
/// `phases` left (run once per recycled instance, then snapshotted) is
/// there for every request, and it saw nothing of any request. A call that
/// grows the guest's memory is not recycled (a memory cannot shrink). With
/// recycling off every call is fresh and `phases` never runs in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_instances_carry_nothing_from_one_request_to_the_next() {
    let o = Origin::start("o").await;
    let route = format!(
        r#"
[[routes]]
name = "leak"
upstream = "app"
limits.max_header_bytes = "120KiB"
[[routes.filters]]
path = "{}"
"#,
        wasm("leak")
    );
    for recycling in [true, false] {
        let text = filter_config(o.addr, &route).replace(
            "[server]\n",
            &format!("[server]\nfilter_recycling = {recycling}\n"),
        );
        let gw = Gateway::start(&text).await;
        let clean = format!(
            "calls=1 previous=none residue=none phases={}",
            if recycling { "clean" } else { "none" }
        );
        let ask = |secret: String, pad: usize| {
            let url = gw.url("/x");
            async move {
                let r = client()
                    .get(url)
                    .header("x-secret", secret)
                    .header("x-pad", "p".repeat(pad))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.text().await.unwrap()
            }
        };
        for i in 0..30 {
            assert_eq!(
                ask(format!("secret-{}", 1000 + i), 0).await,
                clean,
                "request {i}, recycling {recycling}"
            );
        }
        let m = gw.metrics().await;
        let fresh = sample(
            &m,
            r#"edgegate_filter_instances_total{filter="leak",kind="fresh"}"#,
        );
        let recycled = sample(
            &m,
            r#"edgegate_filter_instances_total{filter="leak",kind="recycled"}"#,
        );
        assert_eq!(fresh + recycled, 30.0, "{m}");
        if recycling {
            // One warm instance per worker thread at most is built fresh.
            assert!(recycled >= 26.0, "fresh {fresh}, recycled {recycled}");
        } else {
            assert_eq!(recycled, 0.0);
        }
        // 80 KiB of headers grow the guest's 64 KiB memory: that instance
        // is dropped, and the next calls are still clean.
        assert_eq!(ask("secret-77".into(), 80 << 10).await, clean);
        for i in 0..4 {
            assert_eq!(ask(format!("secret-{}", 2000 + i), 0).await, clean);
        }
        let m = gw.metrics().await;
        assert!(
            sample(
                &m,
                r#"edgegate_filter_memory_grows_total{filter="leak",route="leak"}"#
            ) >= 1.0,
            "{m}"
        );
    }
}
