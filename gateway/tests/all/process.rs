//! The real binary: `check`, drop-in mode, signals (SIGHUP reload, SIGTERM
//! drain then exit), JSON access log. Signals are process-wide, so these run
//! edgegate as a child process.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edgegate");

struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, stdout }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY-free: libc::kill through std is not available; use the `kill` command.
        let name = match sig {
            libc::SIGHUP => "HUP",
            libc::SIGTERM => "TERM",
            _ => "INT",
        };
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    fn output(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, asserts it exited 0 (showing both streams if not), returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Two free loopback addresses: a public listener and an admin listener.
fn listen_and_admin() -> (String, String) {
    let [listen, admin] = free_ports::<2>();
    (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{admin}"))
}

async fn wait_up(admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = client().get(format!("http://{admin}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("edgegate at {admin} never became ready");
}

#[test]
fn check_accepts_every_example_and_names_file_line_key_on_errors() {
    for entry in std::fs::read_dir(repo().join("policies/examples")).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\nlisten = \"0.0.0.0:8080\"\ntimeout = 3\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3:1: `listeners[0].timeout`: unknown field `timeout`"),
        "{err}"
    );
}

#[test]
fn check_load_loads_what_the_config_names() {
    // The runnable examples load as they are.
    for example in ["images.toml", "demo.toml"] {
        let out = run_ok(
            Command::new(BIN)
                .args(["check", "--load", "--config"])
                .arg(repo().join("policies/examples").join(example)),
        );
        assert!(out.contains("ok, loaded"), "{out}");
    }
    // Valid syntax, but a certificate that is not there: only --load sees it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tls.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\nlisten = \"127.0.0.1:8443\"\n[[listeners.tls.certificates]]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n[upstreams.app]\nbackends = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"all\"\nupstream = \"app\"\n",
    )
    .unwrap();
    run_ok(Command::new(BIN).args(["check", "--config"]).arg(&cfg));
    let out = Command::new(BIN)
        .args(["check", "--load", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.crt"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_in_round_robin_json_access_log_and_sigterm_drain() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let (listen, admin) = listen_and_admin();
    let mut p = Proc::spawn(&[
        "--upstream",
        &format!("http://{}", a.addr),
        "--upstream",
        &format!("http://{}", b.addr),
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--pop",
        "dropin",
        "--threads",
        "2",
        "--log-format",
        "json",
        "--drain-window",
        "1500ms",
    ]);
    wait_up(&admin).await;
    for _ in 0..4 {
        let r = client()
            .get(format!("http://{listen}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (2, 2),
        "round robin over both upstreams"
    );

    // JSON access log line with route, upstream, status, bytes, duration.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let out = p.output();
        if let Some(l) = out
            .lines()
            .find(|l| l.contains("\"target\":\"edgegate::access\""))
        {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line in:\n{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["route"], "default");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["path"], "/x");
    assert!(entry["bytes"].as_u64().unwrap() > 0);
    assert!(entry["duration_ms"].is_number());
    assert!(entry["upstream"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // SIGTERM: readyz fails at once, traffic still served, then a clean exit.
    p.signal(libc::SIGTERM);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1);
    loop {
        let r = client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz did not fail promptly after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        client()
            .get(format!("http://{listen}/y"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = p.wait_exit(Duration::from_secs(20));
        (s, p)
    })
    .await
    .unwrap();
    let (exit, p) = status;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "edgegate did not exit after the drain window:\n{}",
            p.output()
        )
    });
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "exited before the drain window"
    );
    // Access lines are buffered: the one served while draining was still
    // written out before the process ended.
    let out = p.output();
    assert!(
        out.lines()
            .any(|l| l.contains("\"target\":\"edgegate::access\"") && l.contains("\"path\":\"/y\"")),
        "the access line of the request served while draining is missing:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_config_and_rejects_a_bad_one() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let (listen, admin) = listen_and_admin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgegate.toml");
    let config = |backend: std::net::SocketAddr| {
        simple_config(&[backend], "")
            .replace("{listen}", &listen)
            .replace("{admin}", &admin)
    };
    std::fs::write(&path, config(a.addr)).unwrap();
    let p = Proc::spawn(&["--config", path.to_str().unwrap()]);
    wait_up(&admin).await;
    let url = format!("http://{listen}/");
    assert_eq!(
        client().get(&url).send().await.unwrap().headers()["x-origin"],
        "a"
    );

    std::fs::write(&path, config(b.addr)).unwrap();
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client().get(&url).send().await.unwrap().headers()["x-origin"] != "b" {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply the new config:\n{}",
            p.output()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    std::fs::write(
        &path,
        config(a.addr).replace("[[routes]]", "[[routes]]\nupstream_typo = 1"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.output().contains("config reload rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            p.output()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(p.output().contains("upstream_typo"));
    assert_eq!(
        client().get(&url).send().await.unwrap().headers()["x-origin"],
        "b",
        "previous config keeps serving"
    );
    let status: serde_json::Value = client()
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["config_generation"], 2);
}

#[test]
fn filter_new_scaffolds_a_crate_that_builds_and_passes_its_test() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["filter", "new", "my-filter", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let krate = dir.path().join("my-filter");
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/my_filter.wasm");
    for (request, expect) in [
        ("tests/request.http", "respond:403"),
        ("tests/allowed.http", "continue"),
    ] {
        let out = Command::new(BIN)
            .args(["filter", "test", "--component"])
            .arg(&wasm)
            .arg("--request")
            .arg(krate.join(request))
            .args(["--expect", expect])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{request}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("expected `{expect}`: ok")));
    }
    // A wrong expectation fails the command.
    let out = Command::new(BIN)
        .args(["filter", "test", "--component"])
        .arg(&wasm)
        .arg("--request")
        .arg(krate.join("tests/allowed.http"))
        .args(["--expect", "respond:403"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn filter_test_runs_a_routes_chain_from_a_real_config() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.http");
    std::fs::write(&req, "GET /api/items HTTP/1.1\nHost: example.com\n\n").unwrap();
    let example = repo().join("policies/examples/auth-ratelimit.toml");
    let stdout = run_ok(
        Command::new(BIN)
            .args(["filter", "test", "--config"])
            .arg(&example)
            .args(["--route", "api", "--request"])
            .arg(&req)
            .args(["--expect", "respond:401"]),
    );
    assert!(
        stdout.contains("www-authenticate: Bearer realm=\"edgegate\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("memory: `jwt-auth` used 64 KiB of linear memory per call"),
        "{stdout}"
    );
    assert!(!stdout.contains("grew past"), "{stdout}");

    // A request too big for a filter's initial memory is pointed out: in
    // production every such call pays for a memory resize.
    let big = dir.path().join("big.http");
    std::fs::write(
        &big,
        format!(
            "GET /x HTTP/1.1\nHost: example.com\nCookie: s={}\n\n",
            "c".repeat(64 << 10)
        ),
    )
    .unwrap();
    let stdout = run_ok(
        Command::new(BIN)
            .args(["filter", "test", "--component"])
            .arg(guest_dir().join("noop.wasm"))
            .arg("--request")
            .arg(&big)
            .args(["--expect", "continue"]),
    );
    let memory = &stdout[stdout.find("memory:").unwrap_or(0)..];
    assert!(
        memory.contains("it grew past its initial memory in 1 call(s)"),
        "{memory}"
    );

    // The production limits apply locally too: a spinning filter is stopped.
    let spin = guest_dir().join("spin.wasm");
    let cfg = dir.path().join("spin.toml");
    std::fs::write(&cfg, "[filter]\ntimeout = \"20ms\"\n").unwrap();
    let stdout = run_ok(
        Command::new(BIN)
            .args(["filter", "test", "--component"])
            .arg(&spin)
            .arg("--filter-config")
            .arg(&cfg)
            .arg("--request")
            .arg(&req)
            .args(["--expect", "fail"]),
    );
    assert!(stdout.contains("timeout"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_in_cache_flag_caches_what_the_origin_marks_cacheable() {
    use crate::cache::{Reply, Scripted};
    let origin = Scripted::start().await;
    origin.set("/c", Reply::ok("max-age=60", "cacheable"));
    origin.set("/u", Reply::ok("", "unmarked"));
    let (listen, admin) = listen_and_admin();
    let _p = Proc::spawn(&[
        "--upstream",
        &format!("http://{}", origin.addr),
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--pop",
        "edge1",
        "--cache",
        "16MiB",
    ]);
    wait_up(&admin).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        for path in ["/c", "/u"] {
            let r = client()
                .get(format!("http://{listen}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            statuses.push(r.headers()["cache-status"].to_str().unwrap().to_string());
        }
    }
    assert_eq!(
        (origin.hits("/c"), origin.hits("/u")),
        (1, 2),
        "{statuses:?}"
    );
    assert!(statuses[2].starts_with("edge1; hit"), "{statuses:?}");
    let m = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("edgegate_cache_capacity_bytes 16777216"), "{m}");
}

/// Both runtime flavours (`server.work_stealing`), each in its own process
/// as in production, on one worker thread (the harshest case for per-thread
/// event loops): many connections at once are all served, and a filter
/// spinning on one route is stopped at its deadline while the other route
/// keeps answering (the epoch callback yields the spinning guest back to
/// the event loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_runtime_flavours_serve_concurrently_beside_a_spinning_filter() {
    for stealing in [false, true] {
        let o = Origin::start("o").await;
        let (listen, admin) = listen_and_admin();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgegate.toml");
        let spin = guest_dir().join("spin.wasm");
        std::fs::write(
            &path,
            format!(
                r#"
[server]
threads = 1
work_stealing = {stealing}
[log]
access_log = false
[admin]
listen = "{admin}"
[[listeners]]
listen = "{listen}"
[upstreams.app]
backends = ["{origin}"]
[[routes]]
name = "spin"
path_prefix = "/spin"
upstream = "app"
[[routes.filters]]
path = "{spin}"
timeout = "30ms"
[[routes]]
name = "ok"
upstream = "app"
"#,
                origin = o.addr,
                spin = spin.display()
            ),
        )
        .unwrap();
        let p = Proc::spawn(&["--config", path.to_str().unwrap()]);
        wait_up(&admin).await;

        let mut spins = Vec::new();
        for _ in 0..4 {
            let url = format!("http://{listen}/spin/x");
            spins.push(tokio::spawn(async move {
                client().get(&url).send().await.unwrap().status()
            }));
        }
        let mut tasks = Vec::new();
        for c in 0..16 {
            let url = format!("http://{listen}/c{c}");
            tasks.push(tokio::spawn(async move {
                // One client per task: its own keep-alive connection.
                let http = client();
                for i in 0..10 {
                    // Says what failed: this once failed here, unexplained.
                    let r = http.get(&url).send().await.unwrap_or_else(|e| {
                        panic!("work_stealing = {stealing}: {url} request {i}: {e:?}")
                    });
                    assert_eq!(r.status(), 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for s in spins {
            assert_eq!(s.await.unwrap(), 503, "work_stealing = {stealing}");
        }
        assert_eq!(o.hits(), 160, "work_stealing = {stealing}:\n{}", p.output());
    }
}
