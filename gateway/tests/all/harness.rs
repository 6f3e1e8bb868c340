//! Test harness: an in-process origin that counts and echoes requests, and a
//! gateway booted in-process through the library from a TOML template.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
    /// The body arrived whole (false when the sender aborted mid-body).
    pub complete: bool,
}

/// An HTTP/1.1 + h2c origin on 127.0.0.1:0.
pub struct Origin {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Status of `/healthz`.
    pub health_status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Paths: `/healthz` (status from `health_status`, not counted),
    /// `/slow/<ms>` sleeps, anything else echoes as JSON with `x-origin`.
    pub async fn start(name: &str) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health_status = Arc::new(AtomicU16::new(200));
        let conns = Arc::new(AtomicUsize::new(0));
        let (h, s, hs, n) = (
            hits.clone(),
            seen.clone(),
            health_status.clone(),
            name.to_string(),
        );
        let c = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, s, hs, n) = (h.clone(), s.clone(), hs.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (h, s, hs, n) = (h.clone(), s.clone(), hs.clone(), n.clone());
                        async move { Ok::<_, Infallible>(answer(req, &h, &s, &hs, &n).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            conns,
            seen,
            health_status,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw no request")
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    health: &AtomicU16,
    name: &str,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let status = health.load(Ordering::SeqCst);
        return Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health")))
            .unwrap();
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
    }
    let collected = req.into_body().collect().await.map(|b| b.to_bytes());
    let complete = collected.is_ok();
    let body = collected.unwrap_or_default();
    let s = Seen {
        method,
        path,
        headers,
        body_len: body.len(),
        complete,
    };
    let json = serde_json::json!({
        "origin": name, "method": s.method, "path": s.path, "headers": s.headers, "body_len": s.body_len,
    });
    seen.lock().unwrap().push(s);
    Response::builder()
        .header("content-type", "application/json")
        .header("x-origin", name)
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// A port that was free a moment ago (Pingora binds its own listeners).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports that were free a moment ago: all bound at once, so the
/// kernel cannot hand the same one out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A gateway running in this process.
pub struct Gateway {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Extra public listeners, in `{listenN}` order.
    pub extra: Vec<SocketAddr>,
    pub config_path: PathBuf,
    pub shared: Arc<edgegate::state::Shared>,
    pub dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Starts from `template`, where `{listen}`, `{listen1}`.. and `{admin}`
    /// become free addresses and `{dir}` the gateway's temp dir.
    pub async fn start(template: &str) -> Gateway {
        Self::start_in(tempfile::tempdir().unwrap(), template).await
    }

    pub async fn start_in(dir: tempfile::TempDir, template: &str) -> Gateway {
        let [p_http, p_admin, p_extra1, p_extra2] = free_ports::<4>();
        let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        let (http, admin) = (addr(p_http), addr(p_admin));
        let extra = vec![addr(p_extra1), addr(p_extra2)];
        let text = fill(template, http, admin, &extra, dir.path());
        let config_path = dir.path().join("edgegate.toml");
        std::fs::write(&config_path, text).unwrap();
        let shared = edgegate::state::Shared::load(
            edgegate::state::ConfigSource::File(config_path.clone()),
            edgegate::state::machine_defaults(),
        )
        .expect("config loads");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            edgegate::server::run(
                s,
                edgegate::server::RunOptions {
                    handle_signals: false,
                    stop: Some(stop_rx),
                    // Many servers start and stop in this one process; the
                    // per-thread runtimes (the default) are covered by the
                    // tests in process.rs, which run the binary.
                    force_work_stealing: true,
                },
            )
            .unwrap();
        });
        let gw = Gateway {
            http,
            admin,
            extra,
            config_path,
            shared,
            dir,
            stop,
            thread: Some(thread),
        };
        gw.wait_admin().await;
        gw
    }

    async fn wait_admin(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client()
                .get(format!("http://{}/healthz", self.admin))
                .send()
                .await
            {
                if r.status() == 200 {
                    // Public listeners start alongside; give them the same check.
                    if tokio::net::TcpStream::connect(self.http).await.is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "gateway did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server thread has returned (after a drain or stop).
    pub fn exited(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /status` on the admin listener.
    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `POST /admin/reload`.
    pub async fn reload(&self) -> reqwest::Response {
        client()
            .post(self.admin_url("/admin/reload"))
            .send()
            .await
            .unwrap()
    }

    /// Rewrites the config file from `template` (same placeholders).
    pub fn rewrite(&self, template: &str) {
        let text = fill(
            template,
            self.http,
            self.admin,
            &self.extra,
            self.dir.path(),
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready_status(&self, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = client()
                .get(self.admin_url("/readyz"))
                .send()
                .await
                .unwrap();
            if r.status() == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "readyz never became {status}: {}",
                r.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fill(
    template: &str,
    http: SocketAddr,
    admin: SocketAddr,
    extra: &[SocketAddr],
    dir: &std::path::Path,
) -> String {
    let mut t = template
        .replace("{listen}", &http.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{dir}", &dir.display().to_string());
    for (i, a) in extra.iter().enumerate() {
        t = t.replace(&format!("{{listen{}}}", i + 1), &a.to_string());
    }
    t
}

/// A client that never pools across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends raw bytes and returns everything read until close or timeout.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A minimal config: one listener, one group with the given backends, one catch-all route.
pub fn simple_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        r#"
[pop]
name = "test-pop"

[server]
threads = 2
drain_window = "1s"

[log]
access_log = false

[admin]
listen = "{{admin}}"

[[listeners]]
listen = "{{listen}}"

[upstreams.app]
backends = [{}]

[[routes]]
name = "all"
upstream = "app"
{extra}
"#,
        list.join(", ")
    )
}

/// The repository root. Read from the environment `cargo test` runs the
/// binary with rather than baked in at compile time: a test binary reused
/// from a shared target dir may have been compiled in another checkout.
pub fn repo() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .expect("the gateway crate lives inside the repository")
        .to_path_buf()
}

/// Builds the guest components (`filters/`, for wasm32-wasip2) once per test
/// run and returns the directory holding the `.wasm` files.
pub fn guest_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let repo = repo();
        let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../wasm-guests");
        // Run from `filters/` so its `.cargo/config.toml` applies; name the
        // target too, in case a parent config overrides it.
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .current_dir(repo.join("filters"))
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the filter components failed");
        target.join("wasm32-wasip2/release")
    })
}
