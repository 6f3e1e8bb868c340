//! Measures cloudflare/pingora#946 through edgegate: how many upgraded
//! WebSocket connections lose the client's first frame when it is sent the
//! instant the 101 arrives (Pingora's upstream half can take the upgrade
//! request's empty-body end for the end of the tunnel). A measurement, not a
//! test: it prints the outcomes. Once a Pingora release carries the fix,
//! every connection echoes, and `websocket_upgrade_passes_through` in
//! `tests/all/proxy.rs` can drop its wait before the first frame.
//!
//!   cargo run --release -p edgegate --example ws_first_frame -- [CONNECTIONS] [steal]
//!
//! `steal` runs Pingora's work-stealing runtime instead of the default
//! per-thread event loops.

use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

fn main() -> anyhow::Result<()> {
    let tries: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let steal = std::env::args().nth(2).is_some_and(|a| a == "steal");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    // An echo WebSocket origin on its own runtime, so it answers the
    // upgrade as fast as a separate server would (the race needs the 101
    // to be back before Pingora's downstream half has queued the request's
    // end).
    let origin_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let origin = origin_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let origin_addr = origin.local_addr()?;
    origin_rt.spawn(async move {
        while let Ok((s, _)) = origin.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    // edgegate in front of it, in this process (one server per process).
    let (listen, admin) = (free_port()?, free_port()?);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("edgegate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nthreads = 2\n[log]\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [[listeners]]\nlisten = \"127.0.0.1:{listen}\"\n[upstreams.ws]\nbackends = [\"{origin_addr}\"]\n\
             [[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        ),
    )?;
    let shared = edgegate::state::Shared::load(
        edgegate::state::ConfigSource::File(path),
        edgegate::state::machine_defaults(),
    )?;
    std::thread::spawn(move || {
        let _ = edgegate::server::run(
            shared,
            edgegate::server::RunOptions {
                handle_signals: false,
                stop: None,
                force_work_stealing: steal,
            },
        );
    });

    let outcomes = rt.block_on(async move {
        let ready = format!("http://127.0.0.1:{admin}/readyz");
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut outcomes = BTreeMap::<String, usize>::new();
        for i in 0..tries {
            let url = format!("ws://127.0.0.1:{listen}/chat");
            let outcome = match tokio_tungstenite::connect_async(url).await {
                Err(e) => format!("handshake error: {e}"),
                Ok((mut ws, _)) => match ws.send(Message::text(format!("first {i}"))).await {
                    Err(e) => format!("send error: {e}"),
                    Ok(()) => match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                        Err(_) => "no echo within 2 s".to_string(),
                        Ok(None) => "closed".to_string(),
                        Ok(Some(Err(e))) => format!("read error: {e}"),
                        Ok(Some(Ok(m))) if m.is_text() => "echoed".to_string(),
                        Ok(Some(Ok(m))) => format!("other frame: {m:?}"),
                    },
                },
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        outcomes
    });
    let runtime = if steal { "work-stealing" } else { "per-thread" };
    println!("{tries} upgraded connections ({runtime} runtime), first frame sent at once:");
    for (outcome, n) in outcomes {
        println!("  {n:6}  {outcome}");
    }
    std::process::exit(0);
}
