//! Assembles and runs the Pingora server: proxy service (public
//! listeners), admin service, and one background service for health checks
//! and signals.
//!
//! Shutdown is edgegate's, not Pingora's default: `SIGTERM` and
//! `POST /admin/drain` both start a drain (readyz fails at once, traffic is
//! still served) and only after the drain window does Pingora's graceful
//! shutdown begin. `SIGINT` stops at once; `SIGHUP` reloads.

use crate::admin::AdminApp;
use crate::proxy::EdgeProxy;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How the gateway is run.
#[derive(Default)]
pub struct RunOptions {
    /// React to `SIGTERM`/`SIGINT`/`SIGHUP` (the binary does; in-process
    /// tests do not, as signals are process-wide).
    pub handle_signals: bool,
    /// Fires a fast shutdown when `true` is sent (tests, embedding).
    pub stop: Option<watch::Receiver<bool>>,
    /// Use Pingora's work-stealing runtime whatever `server.work_stealing`
    /// says. For embedders that run several servers one after another in
    /// one process: Pingora's per-thread runtimes (`work_stealing = false`)
    /// find their handles through a `thread_local::ThreadLocal`, whose
    /// slots are recycled when threads exit, so a server started after
    /// another stopped can inherit the stopped server's runtime handles and
    /// spin on its dead listeners. One server per process (the binary) is
    /// unaffected.
    pub force_work_stealing: bool,
}

struct Background {
    shared: Arc<Shared>,
    handle_signals: bool,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = if self.handle_signals {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
        } else {
            None
        };
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut reloading: Option<tokio::task::JoinHandle<()>> = None;
        // The file state last tried, so a bad file is reported once, not every second.
        let mut tried: Option<(u64, Vec<Option<std::time::SystemTime>>)> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    let shared = Arc::clone(&self.shared);
                    let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    let generation = self.shared.current();
                    for group in generation.upstreams.values() {
                        group.health_check_if_due().await;
                    }
                    // Once a second: forget idle rate-limit keys, and reload
                    // when a component, certificate or key file changed.
                    if ticks.is_multiple_of(20) {
                        generation.filters.limiters.forget_idle();
                        generation.filters.keys.refresh_due();
                        let idle = reloading.as_ref().is_none_or(|t| t.is_finished());
                        if let Some(now) = generation.changed_files().filter(|_| idle) {
                            let key = (generation.id, now);
                            if tried.as_ref() != Some(&key) {
                                tried = Some(key);
                                tracing::info!("a component, certificate or key file changed: reloading");
                                let shared = Arc::clone(&self.shared);
                                reloading = Some(tokio::task::spawn_blocking(move || {
                                    let _ = shared.reload();
                                }));
                            }
                        }
                    }
                }
            }
        }
    }
}

struct DrainWatch {
    shared: Arc<Shared>,
    handle_signals: bool,
    stop: Option<watch::Receiver<bool>>,
}

async fn wait_true(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => {
            if rx.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

async fn signal(kind: tokio::signal::unix::SignalKind, enabled: bool) {
    match enabled.then(|| tokio::signal::unix::signal(kind)) {
        Some(Ok(mut s)) => {
            s.recv().await;
        }
        _ => std::future::pending::<()>().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainWatch {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::SignalKind;
        let mut stop = self.stop.clone();
        let mut drain = Some(self.shared.drain_requested());
        tokio::select! {
            _ = wait_true(&mut stop) => return ShutdownSignal::FastShutdown,
            _ = signal(SignalKind::interrupt(), self.handle_signals) => return ShutdownSignal::FastShutdown,
            _ = signal(SignalKind::terminate(), self.handle_signals) => {
                tracing::info!("SIGTERM: draining");
                self.shared.start_drain();
            }
            _ = wait_true(&mut drain) => {}
        }
        let window = self.shared.current().config.server.drain_window;
        tokio::select! {
            _ = tokio::time::sleep(window) => {}
            _ = wait_true(&mut stop) => return ShutdownSignal::FastShutdown,
            _ = signal(SignalKind::interrupt(), self.handle_signals) => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("drain window over: graceful shutdown");
        ShutdownSignal::GracefulTerminate
    }
}

/// Builds the Pingora server for `shared` and runs it until shutdown.
pub fn run(shared: Arc<Shared>, options: RunOptions) -> anyhow::Result<()> {
    let config = shared.current().config.clone();
    let conf = ServerConf {
        threads: config.server.threads.get(),
        // The drain window already gave clients their time.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(config.server.shutdown_timeout.as_secs().max(1)),
        upstream_keepalive_pool_size: 256,
        // One event loop per thread, as nginx and haproxy run: measured
        // 7% less CPU per plain request and ~20% less on filtered routes
        // than Pingora's default work-stealing runtime (loadtest/RESULTS.md).
        work_stealing: config.server.work_stealing || options.force_work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let server_conf = Arc::clone(&server.configuration);

    let mut http = pingora::proxy::HttpProxy::new(
        EdgeProxy::new(Arc::clone(&shared)),
        Arc::clone(&server_conf),
    );
    http.handle_init_modules();
    http.server_options = Some({
        let mut o = HttpServerOptions::default();
        o.h2c = config.server.h2c;
        o
    });
    // The hit lane answers plain fresh hits in front of Pingora's proxy
    // (`proxy::lane`); everything else reaches `EdgeProxy` as before.
    let mut proxy = Service::new(
        "edgegate proxy".to_string(),
        crate::proxy::lane::EdgeApp::new(http, Arc::clone(&shared)),
    );
    for listener in &config.listeners {
        let addr = listener.listen.to_string();
        match &listener.tls {
            None => proxy.add_tcp(&addr),
            Some(tls) => {
                let resolver = shared
                    .tls
                    .iter()
                    .find(|(n, _)| *n == listener.name)
                    .map(|(_, r)| Arc::clone(r))
                    .ok_or_else(|| {
                        anyhow::anyhow!("no certificates loaded for listener `{}`", listener.name)
                    })?;
                let settings = crate::tls::listener_settings(resolver, tls.h2)?;
                proxy.add_tls_with_settings(&addr, None, settings);
            }
        }
    }

    let mut admin = Service::new(
        "edgegate admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(AdminApp::new(Arc::clone(&shared))),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);

    let background = background_service(
        "edgegate health and signals",
        Background {
            shared: Arc::clone(&shared),
            handle_signals: options.handle_signals,
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background);
    server.bootstrap();
    tracing::info!(
        pop = %config.pop_name,
        listeners = ?config.listeners.iter().map(|l| l.listen.to_string()).collect::<Vec<_>>(),
        admin = %config.admin.listen,
        "edgegate serving"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainWatch {
            shared,
            handle_signals: options.handle_signals,
            stop: options.stop,
        }),
    });
    Ok(())
}
