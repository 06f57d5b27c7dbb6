//! Starting the gateway: the Router and the sessions on the HTTP worker
//! threads (see [`super::placement`]), one supervisor per pool, and the HTTP
//! server with graceful drain on SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_cors::Cors;
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::AppConfig;
use actix_web::{web, App};

use super::placement::{Deferred, Placement};
use super::reload::Reloader;
use crate::actors::messages::Busy;
use crate::actors::restart_log::RestartLog;
use crate::actors::router::Router;
use crate::actors::Reload;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::support;

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

/// Waits until no request holds a session or waits for one; false if
/// `deadline` came first.
async fn drained(router: &Addr<Router>, deadline: tokio::time::Instant) -> bool {
    loop {
        if let Ok((0, 0)) = router.send(Busy).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listening socket. A copy of it is kept to close it at shutdown: once
/// it no longer listens, new connections are refused rather than left
/// waiting in the backlog.
fn listen_on(addr: SocketAddr) -> std::io::Result<(std::net::TcpListener, std::net::TcpListener)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: std::net::TcpListener = socket.into();
    let closer = listener.try_clone()?;
    Ok((listener, closer))
}

/// CORS for browser frontends: any origin when keys are set (a page must
/// still present one), else only `server.cors_origins` and pages the
/// gateway serves itself.
fn cors(guard: &web::Data<http::guard::Guard>) -> Cors {
    let mut cors = Cors::default();
    if guard.cors_any() {
        cors = cors.allow_any_origin();
    } else {
        let guard = guard.clone();
        cors = cors.allowed_origin_fn(move |origin, head| guard.origin_allowed(origin, head));
    }
    cors.allow_any_method()
        .allow_any_header()
        // A fixed list: exposing "any" header lists the response's own
        // header names anew for every response.
        .expose_headers([
            http::trace::REQUEST_ID,
            http::trace::OVERHEAD_HEADER,
            http::DROPPED_HEADER,
            "retry-after",
        ])
        .max_age(3600)
}

/// The HTTP settings both protocols are served with (see [`super::h2c`]).
fn http_settings<S>(
    idle_timeout: Duration,
    local: SocketAddr,
    connections: &http::guard::Connections,
    max_connections: usize,
) -> actix_http::HttpServiceBuilder<actix_web::rt::net::TcpStream, S>
where
    S: actix_service::ServiceFactory<actix_http::Request, Config = ()>,
    S::Error: Into<actix_http::Response<actix_web::body::BoxBody>> + 'static,
    S::InitError: std::fmt::Debug,
    <S::Service as actix_service::Service<actix_http::Request>>::Future: 'static,
{
    let connections = connections.clone();
    actix_http::HttpServiceBuilder::default()
        .keep_alive(idle_timeout)
        // actix-web's defaults for these two.
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        // A client that closes its side is gone: drop its response at
        // once, which closes the request's mailbox and cancels the
        // upstream call.
        .h1_allow_half_closed(false)
        .local_addr(local)
        .on_connect_ext(move |tcp: &actix_web::rt::net::TcpStream, ext| {
            // Answers are written in pieces (headers, then chunks):
            // without TCP_NODELAY, Nagle's algorithm and delayed ACKs
            // add ~40 ms to them.
            let _ = tcp.set_nodelay(true);
            connections.opened(ext, max_connections);
        })
}

/// Restart-log lines kept in memory for the admin API.
const RECENT_EVENTS: usize = 1000;

/// Runs the gateway until it is told to stop.
///
/// `memory`, if given, is run every few seconds on each HTTP worker
/// thread (see [`super::pools`]): the binary passes its allocator's
/// collection there, which hands memory freed after a load back to the OS
/// (mimalloc does so lazily, on a thread's later allocations, so a worker
/// gone quiet would keep it).
pub async fn serve(
    cfg: Config,
    config_path: std::path::PathBuf,
    memory: Option<support::memory::Hooks>,
) -> std::io::Result<()> {
    if let Some(hooks) = memory {
        support::memory::install(hooks);
    }
    let listen: SocketAddr = cfg
        .server
        .listen
        .parse()
        .map_err(|e| std::io::Error::other(format!("server.listen: {e}")))?;
    if cfg.server.api_keys.is_empty() {
        if listen.ip().is_loopback() {
            tracing::info!("server.api_keys is empty: no auth (listening on loopback only)");
        } else {
            // Only with server.allow_keyless_remote: config validation refuses it otherwise.
            tracing::warn!(
                %listen,
                "server.api_keys is empty and the gateway listens beyond loopback (server.allow_keyless_remote): ANYONE WHO CAN REACH IT CAN USE YOUR UPSTREAM ACCOUNTS"
            );
        }
    }
    let workers = match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let cluster = crate::cluster::Cluster::start(&cfg.cluster);
    let router = Router::new(cfg.server.max_queue)
        .with_models(
            cfg.pools
                .iter()
                .flat_map(|p| p.models.iter().map(|m| Arc::from(m.public.as_str()))),
        )
        .with_cluster(cluster.clone());
    let tickets = router.tickets();
    let (router, router_later) = Deferred::new(router);
    if let Some(c) = &cluster {
        let router_cd = router.clone();
        c.on_cooldown(move |cd| router_cd.do_send(crate::actors::messages::SharedCooldown(cd)));
        let (c, router) = (c.clone(), router.clone());
        actix_web::rt::spawn(async move {
            loop {
                c.returned().await;
                router.do_send(crate::actors::messages::Resync);
            }
        });
    }
    let (placement, placed) = Placement::new(
        workers,
        Box::new(move || {
            router_later.run();
        }),
    );
    let placement = Arc::new(placement);
    let log = RestartLog::open(
        &cfg.server.data_dir,
        cfg.server.restart_log_max_bytes.0 as u64,
        cfg.server.restart_log_files,
        RECENT_EVENTS,
    )
    .with_cluster(cluster.clone())
    .start();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = web::Data::new(AppState::new(
        &cfg,
        router.clone(),
        tickets,
        shutdown_rx,
        crate::upstream::registry::speaks,
        cluster.clone(),
    ));
    // Starts every pool once the workers run, and later applies reloads.
    let (reloader, mut reloader_later) = Deferred::new(
        Reloader::new(
            config_path,
            cfg.clone(),
            router.clone(),
            log.clone(),
            state.catalog.clone(),
        )
        .with_cluster(cluster.clone()),
    );
    actix_web::rt::spawn(async move {
        if let Ok(arbiters) = placed.await {
            reloader_later.actor_mut().place(arbiters);
            reloader_later.run();
        }
    });
    let router_busy = router.clone();
    let admin = web::Data::new(
        AdminState::new(router.clone(), log.clone(), cfg.server.admin_key.clone())
            .with_reloader(reloader.clone().recipient())
            .with_cluster(cluster.clone()),
    );
    if let Some(c) = cluster {
        actix_web::rt::spawn(admin::heartbeat(router.clone(), c));
    }
    actix_web::rt::spawn(reload_on_sighup(reloader));
    let (listener, closer) = listen_on(listen)?;
    let guard = web::Data::new(http::guard::Guard::new(&cfg.server));
    let connections = http::guard::Connections::default();
    let max_connections = cfg.server.max_connections;
    let body_limit = cfg.server.body_limit.0;
    let idle_timeout = cfg.server.idle_timeout;
    let local = listener.local_addr()?;
    // Made twice per worker, for HTTP/1.1 and for HTTP/2: making an app's
    // service takes its routes out of it.
    let app = move || {
        let app = App::new()
            .app_data(state.clone())
            .app_data(admin.clone())
            .app_data(guard.clone())
            .configure(admin::routes)
            .wrap(cors(&guard))
            .wrap(actix_web::middleware::from_fn(http::guard::check))
            .configure(http::routes)
            .into_factory()
            .map_err(|e: actix_web::Error| e.error_response());
        // actix-web's `AppConfig` only feeds URL generation and the host of
        // requests without a `Host` header, neither used here.
        actix_service::map_config(app, |()| AppConfig::default())
    };
    // actix-web's `HttpServer`, assembled by hand for one thing it cannot
    // do: answer `Expect: 100-continue` with a 413 when the declared length
    // is over the limit (it always sends `100 Continue`).
    let server = actix_server::Server::build()
        .workers(workers)
        // Signals are handled below, so streams still open at the drain
        // deadline end with an error event rather than a cut connection.
        .disable_signals()
        // Requests are drained below, before the workers are told to stop;
        // what is left then is idle keep-alive connections.
        .shutdown_timeout(DRAIN_GRACE_SECS)
        .listen("troupe", listener, move || {
            placement.join();
            let h1 = http_settings(idle_timeout, local, &connections, max_connections)
                .expect(actix_service::fn_service(move |req| {
                    std::future::ready(http::body::expect_continue(req, body_limit))
                }))
                .h1(super::pools::upkept(app()));
            let h2 = http_settings(idle_timeout, local, &connections, max_connections).h2(app());
            super::h2c::auto_h2c(h1, h2)
        })?;
    tracing::info!(addr = %local, "listening");
    {
        // Scripts and tests read the bound address (port 0 picks one) here.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{local}");
        let _ = out.flush();
    }
    let server = server.run();
    let handle = server.handle();
    let drain = cfg.server.drain_timeout;
    actix_web::rt::spawn(async move {
        let signal = wait_for_signal().await;
        crate::actors::pool::begin_stopping();
        tracing::info!(
            signal,
            drain_secs = drain.as_secs(),
            "stopping: no new connections, draining in-flight requests"
        );
        // Sessions live on the worker threads, and each worker stops once
        // its own connections are done: so every request is drained first,
        // while all workers still run.
        handle.pause().await;
        // The accept thread takes the pause a moment later; a listener
        // closed before that wakes it to a failed accept, logged as errors.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = socket2::SockRef::from(&closer).shutdown(std::net::Shutdown::Both) {
            tracing::warn!(error = %e, "cannot close the listening socket");
        }
        let deadline = tokio::time::Instant::now() + drain;
        if !drained(&router_busy, deadline).await {
            tracing::warn!("drain timeout reached: ending the remaining streams with an error");
            let _ = shutdown_tx.send(true);
            let grace = tokio::time::Instant::now() + Duration::from_secs(DRAIN_GRACE_SECS);
            drained(&router_busy, grace).await;
        }
        handle.stop(true).await;
    });
    let result = server.await;
    // Local agent processes belong to this gateway: none outlives it.
    crate::upstream::registry::shutdown();
    result
}
