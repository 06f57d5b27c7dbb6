//! Starting the gateway: the Router, one supervisor per pool, session
//! arbiters, and the HTTP server with graceful drain on SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use actix_cors::Cors;
use actix_web::{web, App, HttpServer};

use crate::actors::restart_log::RestartLog;
use crate::actors::router::Router;
use crate::admin::{self, AdminState};
use crate::canonical::tokens;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::reload::{Reload, Reloader};

/// Time given to streams to write their error event after the drain
/// deadline, before connections are closed.
const DRAIN_GRACE_SECS: u64 = 2;

/// Reloads the configuration on every SIGHUP.
async fn reload_on_sighup(reloader: Addr<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            reloader.do_send(Reload { source: "SIGHUP" });
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Restart-log lines kept in memory for the admin API.
const RECENT_EVENTS: usize = 1000;

/// Runs the gateway until it is told to stop.
pub async fn serve(cfg: Config, config_path: std::path::PathBuf) -> std::io::Result<()> {
    tokens::init();
    let listen: SocketAddr = cfg
        .server
        .listen
        .parse()
        .map_err(|e| std::io::Error::other(format!("server.listen: {e}")))?;
    if cfg.server.api_keys.is_empty() {
        if listen.ip().is_loopback() {
            tracing::info!("server.api_keys is empty: no auth (listening on loopback only)");
        } else {
            tracing::warn!(
                %listen,
                "server.api_keys is empty and the gateway listens beyond loopback: ANYONE WHO CAN REACH IT CAN USE YOUR UPSTREAM ACCOUNTS"
            );
        }
    }
    let workers = match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let router = Router::new(cfg.server.max_queue)
        .with_models(
            cfg.pools
                .iter()
                .flat_map(|p| p.models.iter().map(|m| Arc::from(m.public.as_str()))),
        )
        .start();
    let log = RestartLog::open(
        &cfg.server.data_dir,
        cfg.server.restart_log_max_bytes.0 as u64,
        cfg.server.restart_log_files,
        RECENT_EVENTS,
    )
    .start();
    // Sessions run on their own threads, so upstream I/O never waits on the
    // HTTP workers or the Router.
    let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
    let handles = Arc::new(arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = web::Data::new(AppState::new(&cfg, router.clone(), shutdown_rx));
    // Starts every pool, and later applies reloads.
    let reloader = Reloader::new(
        config_path,
        cfg.clone(),
        router.clone(),
        log.clone(),
        handles.clone(),
        state.catalog.clone(),
    )
    .start();
    let admin = web::Data::new(
        AdminState::new(router, log.clone(), cfg.server.admin_key.clone())
            .with_reloader(reloader.clone()),
    );
    actix_web::rt::spawn(reload_on_sighup(reloader));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(admin.clone())
            .configure(admin::routes)
            .wrap(
                Cors::default()
                    .allow_any_origin()
                    .allow_any_method()
                    .allow_any_header()
                    .expose_any_header()
                    .max_age(3600),
            )
            .configure(http::routes)
    })
    .workers(workers)
    // Answers are written in pieces (headers, then chunks): without
    // TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to them.
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    // Signals are handled below, so streams still open at the drain
    // deadline end with an error event rather than a cut connection.
    .disable_signals()
    // A client that closes its side is gone: drop its response at once, which
    // closes the request's mailbox and cancels the upstream call.
    .h1_allow_half_closed(false)
    .shutdown_timeout(cfg.server.drain_timeout.as_secs() + DRAIN_GRACE_SECS)
    .bind(listen)?;
    for addr in server.addrs() {
        tracing::info!(%addr, "listening");
        // Scripts and tests read the bound address (port 0 picks one) here.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    let server = server.run();
    let handle = server.handle();
    let drain = cfg.server.drain_timeout;
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(
            signal,
            drain_secs = drain.as_secs(),
            "stopping: no new connections, draining in-flight requests"
        );
        let stopped = handle.stop(true);
        actix_web::rt::spawn(async move {
            tokio::time::sleep(drain).await;
            tracing::warn!("drain timeout reached: ending the remaining streams with an error");
            let _ = shutdown_tx.send(true);
        });
        stopped.await;
    });
    let result = server.await;
    // Local agent processes belong to this gateway: none outlives it.
    crate::upstream::lingma::kill_all_agents();
    for a in &arbiters {
        a.stop();
    }
    result
}
