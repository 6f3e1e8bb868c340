//! In-process filter cost: runs each route's request phase N times on one
//! thread (the gateway's own host, limits and imports; no network) and
//! prints µs per request. Complements `loadtest/filters.py`, which measures
//! the same routes through the whole proxy.
//!
//!   cargo run --release -p edgegate --example filter_bench -- [N] [ROUTE|all] [COOKIE_BYTES] [HEADERS]
//!
//! `HEADERS` adds that many of the headers a browser sends with a page
//! request (up to 12); every filter is handed the whole head, so its cost
//! grows with them.
//!
//! With `EDGEGATE_WASM_PERFMAP=1`, `perf record` names guest functions;
//! `FILTER_BENCH_MODE=recycled` (or `fresh`) profiles one mode alone.

use edgegate::filter_host::{apply, FilterSet, RequestFacts};
use edgegate::metrics::Metrics;
use pingora::http::RequestHeader;
use std::time::Instant;

// The allocator the `edgegate` binary runs with, so the numbers are its.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "edgegate-bench-secret-0123456789";

/// What Chrome sends with a page request, besides `host` and `cookie`.
const BROWSER_HEADERS: [(&str, &str); 12] = [
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"130\", \"Google Chrome\";v=\"130\", \"Not?A_Brand\";v=\"99\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("upgrade-insecure-requests", "1"),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-user", "?1"),
    ("sec-fetch-dest", "document"),
    ("referer", "https://bench.test/"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en;q=0.9"),
];

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","kid":"k1"}"#),
        b64(format!(r#"{{"sub":"u1","iss":"bench","aud":"bench","exp":{exp}}}"#).as_bytes())
    );
    let sig = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes()),
        input.as_bytes(),
    );
    let token = format!("{input}.{}", b64(sig.as_ref()));
    // ES256: a fresh P-256 key, its public half in a JWKS file (the host
    // verifies a token's signature once and caches the result, as through
    // the proxy).
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| anyhow::anyhow!("P-256 key generation failed"))?;
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("P-256 key rejected"))?;
    let point = ring::signature::KeyPair::public_key(&key).as_ref(); // 0x04 || x || y
    let dir = tempfile::tempdir()?;
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"e1","x":"{}","y":"{}"}}]}}"#,
            b64(&point[1..33]),
            b64(&point[33..65])
        ),
    )?;
    let es_input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","kid":"e1"}"#),
        input.split_once('.').map_or("", |(_, claims)| claims)
    );
    let es_sig = key
        .sign(&rng, es_input.as_bytes())
        .map_err(|_| anyhow::anyhow!("ES256 signing failed"))?;
    let es_token = format!("{es_input}.{}", b64(es_sig.as_ref()));
    let jwt = r#"[[routes.filters]]
module = "jwt-auth"
key_sets = ["hs"]
config = { key_set = "hs", algorithms = ["HS256"], issuer = "bench", audience = "bench" }
"#;
    let jwt_es = r#"[[routes.filters]]
module = "jwt-auth"
key_sets = ["es"]
config = { key_set = "es", algorithms = ["ES256"], issuer = "bench", audience = "bench", forward_claims = { sub = "x-user-id" } }
"#;
    let rl = r#"[[routes.filters]]
module = "rate-limit"
rate_limits = ["huge"]
config = { bucket = "huge", key = "principal" }
"#;
    let hdr = "[[routes.filters]]\nmodule = \"headers\"\nconfig.request.set = { \"x-edge-pop\" = \"{pop}\" }\n";
    let routes = [
        (
            "noop",
            "[[routes.filters]]\nmodule = \"noop\"\n".to_string(),
        ),
        ("headers", hdr.to_string()),
        ("rate-limit", rl.to_string()),
        ("jwt-hs256", jwt.to_string()),
        ("jwt-es256", jwt_es.to_string()),
        // The route issue 3's throughput target names (`/jwt-rl` in
        // `loadtest/filters.py`).
        ("jwt-es256+rl", format!("{jwt_es}{rl}")),
        ("jwt+rl+headers", format!("{jwt}{rl}{hdr}")),
    ];
    let mut text = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.u]\nbackends = [\"127.0.0.1:1\"]\n\
         [key_sets.hs]\nhmac_secrets = {{ k1 = \"{SECRET}\" }}\n[key_sets.es]\njwks_file = {:?}\n\
         [rate_limits.huge]\nrate = 100000000\n",
        jwks.display().to_string()
    );
    for (name, filters) in &routes {
        text.push_str(&format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"u\"\n{filters}\n"));
    }
    let defaults = policies::Defaults {
        threads: 1,
        pop_name: "bench".into(),
    };
    // The same routes twice: fresh instances for every call, and recycled
    // ones (reset after each call, `server.filter_recycling`), side by side.
    let modes = [false, true]
        .into_iter()
        .map(|recycling| -> anyhow::Result<_> {
            let text = format!("[server]\nfilter_recycling = {recycling}\n{text}");
            let config = policies::parse_str(&text, std::path::Path::new("bench.toml"), &defaults)?;
            let set = FilterSet::new(&config, None)?;
            Ok((config, set, Metrics::new()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("{n} requests per route, one thread; µs per request");
    println!(
        "{:16} {:>10} {:>10} {:>8}",
        "route", "fresh", "recycled", "ratio"
    );
    let only = std::env::args().nth(2).filter(|r| r != "all");
    // `FILTER_BENCH_MODE=fresh|recycled` runs one mode only (for `perf`).
    let only_mode = match std::env::var("FILTER_BENCH_MODE").as_deref() {
        Ok("fresh") => Some(0),
        Ok("recycled") => Some(1),
        _ => None,
    };
    // A third argument adds a `cookie` header of that many bytes: requests
    // from browsers carry a few KiB, and a guest whose heap outgrows its
    // initial memory pays for growing it on every request.
    let cookie: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let browser_headers: usize = std::env::args()
        .nth(4)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for (name, _) in &routes {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let mut req = RequestHeader::build("GET", format!("/{name}/x").as_bytes(), None)?;
        req.insert_header("host", "bench.test")?;
        let bearer = if name.contains("es256") {
            &es_token
        } else {
            &token
        };
        req.insert_header("authorization", format!("Bearer {bearer}"))?;
        req.insert_header("user-agent", "bench")?;
        for (name, value) in BROWSER_HEADERS.iter().take(browser_headers) {
            req.append_header(*name, *value)?;
        }
        if cookie > 0 {
            req.insert_header("cookie", format!("s={}", "x".repeat(cookie)))?;
        }
        let facts = RequestFacts {
            client_ip: "192.0.2.1".into(),
            route: name.to_string(),
            pop: "bench".into(),
            request_id: "r".into(),
            ..Default::default()
        };
        let mut micros = [0.0f64; 2];
        for (m, (config, set, metrics)) in modes.iter().enumerate() {
            if only_mode.is_some_and(|o| o != m) {
                continue;
            }
            let route = config
                .routes
                .routes()
                .iter()
                .find(|r| r.name == *name)
                .ok_or_else(|| anyhow::anyhow!("no route {name}"))?;
            let chain = set.chain(route, config)?;
            let run = |count: usize| {
                rt.block_on(async {
                    for _ in 0..count {
                        let mut f = std::sync::Arc::new(facts.clone());
                        let mut r = req.clone();
                        match apply::run_request_phase(
                            &chain,
                            &mut f,
                            &mut r,
                            "bench.test",
                            metrics,
                        )
                        .await
                        {
                            Ok(apply::RequestPhase::Continue) => {}
                            Ok(apply::RequestPhase::Respond(r)) => {
                                panic!("route {name} answered {}", r.status)
                            }
                            Err(e) => panic!("route {name} failed: {e:?}"),
                        }
                    }
                })
            };
            run(n / 10); // warm-up
            let started = Instant::now();
            run(n);
            micros[m] = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        }
        println!(
            "{:16} {:>10.1} {:>10.1} {:>8.2}",
            name,
            micros[0],
            micros[1],
            micros[1] / micros[0]
        );
    }
    // Per call, from the host's own histograms: a fresh instance, the
    // guest's run (lowering the request in, host calls, lifting the
    // decision out; not the reset), and the linear memory it grew to —
    // what the pool or the reset zeroes.
    println!(
        "{:10} {:16} {:>14} {:>10} {:>9}",
        "mode", "filter", "instantiate µs", "run µs", "peak KiB"
    );
    use edgegate::metrics::filter_mean as mean;
    for (mode, (_, _, metrics)) in ["fresh", "recycled"].iter().zip(&modes) {
        for name in ["noop", "headers", "rate-limit", "jwt-auth"] {
            if let (Some(r), Some(p)) = (
                mean(&metrics.filter_run, name),
                mean(&metrics.filter_memory_peak, name),
            ) {
                let i = mean(&metrics.filter_instantiate, name).unwrap_or(0.0);
                println!(
                    "{:10} {:16} {:>14.1} {:>10.1} {:>9.0}",
                    mode,
                    name,
                    i * 1e6,
                    r * 1e6,
                    p / 1024.0
                );
            }
        }
    }
    Ok(())
}
