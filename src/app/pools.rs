//! What actix keeps of finished requests, kept small and compact.
//!
//! actix reuses finished requests: each worker keeps up to 128 request
//! heads (actix-http), 128 response heads (actix-http) and 128 requests
//! (actix-web, each holding its head), and clears one only when it is
//! reused. After a burst of connections these survivors are a few hundred
//! objects allocated at the peak, scattered through the allocator's pages,
//! and each keeps its whole page resident (32 KiB with mimalloc as built
//! here, `.cargo/config.toml`; 64 KiB when this was measured). The
//! largest were the pooled requests' header maps, about 1.4 KiB each: 30 s
//! after 5,000 streams, anonymous RSS was 9.3 MiB against 1.7 MiB at idle,
//! and 5.8 MiB with the compaction below.
//!
//! Two things keep them small:
//! - [`own_headers`], on every request: a map and a buffer sized to the
//!   request's headers, not slices of the connection's 8 KiB read buffer
//!   and a map with room for 16 headers;
//! - [`compact`], every 30 s on each worker: the pooled objects are
//!   replaced by new ones without headers, allocated while the worker is
//!   quiet (so they sit together in a few pages), and the old ones freed.

use std::rc::{Rc, Weak};
use std::time::Duration;

use actix_http::header::{HeaderMap, HeaderValue};
use actix_http::{Request, Response, StatusCode};
use actix_service::{Service, ServiceFactory};

use crate::support;

/// How many finished requests, request heads and response heads actix
/// keeps per worker (each pool's fixed capacity).
const POOLED: usize = 128;

/// How often each HTTP worker thread hands freed memory back to the OS.
const RELEASE_MEMORY_EVERY: Duration = Duration::from_secs(5);
/// Every this many runs the pools are compacted and the collection forced
/// (see [`support::memory::Hooks`]): every 30 s.
const FORCE_EVERY: u32 = 6;

/// `app`, its requests' headers copied by [`own_headers`] on the way in,
/// and on each worker a task that compacts actix's pools and releases
/// freed memory every few seconds.
pub(crate) fn upkept<F>(
    app: F,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = F::Response,
    Error = F::Error,
    InitError = F::InitError,
>
where
    F: ServiceFactory<Request, Config = ()>,
    F::Service: 'static,
{
    actix_service::fn_factory(move || {
        let made = app.new_service(());
        async move {
            let service = Rc::new(made.await?);
            actix_web::rt::spawn(upkeep(Rc::downgrade(&service)));
            Ok(actix_service::fn_service(move |mut req: Request| {
                own_headers(&mut req);
                service.call(req)
            }))
        }
    })
}

/// One worker's upkeep, for as long as its app lives: frees what this
/// thread freed every [`RELEASE_MEMORY_EVERY`]; every [`FORCE_EVERY`]
/// runs, compacts the pools first and forces the collection.
async fn upkeep<S: Service<Request>>(app: Weak<S>) {
    let mut tick = tokio::time::interval(RELEASE_MEMORY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runs = 0u32;
    loop {
        tick.tick().await;
        runs = runs.wrapping_add(1);
        let force = runs % FORCE_EVERY == 0;
        if force {
            let Some(app) = app.upgrade() else {
                return;
            };
            compact(&*app);
        }
        support::memory::release(force);
    }
}

/// Replaces what this worker's pools hold by new, header-less objects and
/// frees the old ones (see [`renew`]).
///
/// The app's requests are taken out by calls it never gets to run: actix-web
/// takes a pooled request (or makes one) in `call` itself, and the request
/// goes back to the pool when the returned future is dropped unpolled. No
/// middleware or handler runs: the outermost middleware's work happens in
/// its future.
fn compact<S: Service<Request>>(app: &S) {
    // New heads first: the app's new requests take theirs from this pool.
    renew(Request::new, bare_request);
    let call = || app.call(bare_request());
    renew(call, call);
    // The old requests' heads went back to the head pool: renewed again.
    renew(Request::new, bare_request);
    renew(|| Response::new(StatusCode::OK), bare_response);
}

/// Leaves one of actix's pools full of objects from `make` and frees what it
/// held. The pools are LIFO stacks that take a finished object only while
/// they hold fewer than [`POOLED`], and `take` takes a pooled object (or
/// makes one when none is left): taking every pooled object out, then as
/// many new ones, and giving the new ones back first does it.
fn renew<T>(take: impl Fn() -> T, make: impl Fn() -> T) {
    let old: Vec<T> = (0..POOLED).map(|_| take()).collect();
    let new: Vec<T> = (0..POOLED).map(|_| make()).collect();
    drop(new);
    drop(old);
}

/// A request whose head holds no header map (a new head has room for 16).
fn bare_request() -> Request {
    let mut req = Request::new();
    *req.headers_mut() = HeaderMap::new();
    req
}

fn bare_response() -> Response<actix_http::body::BoxBody> {
    let mut res = Response::new(StatusCode::OK);
    *res.headers_mut() = HeaderMap::new();
    res
}

/// Gives a request's headers a map sized to them and their values one
/// small buffer of their own.
///
/// actix-http parses header values as slices of the connection's 8 KiB read
/// buffer into a map with room for 16 headers (about 6.7 KiB). Pooled
/// requests kept both until reused: RSS 30 s after 2,000 streams was 38.6
/// MiB with both, 31.3 with the buffers let go, 18.8 with neither.
fn own_headers(req: &mut Request) {
    let headers = req.headers_mut();
    let total: usize = headers.iter().map(|(_, v)| v.len()).sum();
    let mut all = bytes::BytesMut::with_capacity(total);
    let mut own = HeaderMap::with_capacity(headers.len_keys());
    for (name, value) in headers.iter() {
        all.extend_from_slice(value.as_bytes());
        // Within the capacity reserved above: no new allocation.
        let copy = HeaderValue::from_maybe_shared(all.split().freeze());
        own.append(name.clone(), copy.unwrap_or_else(|_| value.clone()));
    }
    *headers = own;
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::{init_service, TestRequest};
    use actix_web::{web, App, HttpMessage as _};

    fn with_headers() -> Request {
        TestRequest::get()
            .insert_header(("authorization", "Bearer sk-test"))
            .insert_header(("x-long", "x".repeat(300)))
            .to_request()
    }

    #[actix_web::test]
    async fn compacting_leaves_no_header_maps_in_the_pools() {
        let app = init_service(App::new().route("/", web::get().to(|| async { "ok" }))).await;
        // Requests with headers, some at once: actix pools them, maps and all.
        let at_once: Vec<_> = (0..8).map(|_| app.call(with_headers())).collect();
        for call in at_once {
            assert!(call.await.unwrap().status().is_success());
        }
        compact(&app);
        // The app's pooled requests give their heads back to the head pool
        // when taken (taken here by calls that never run)...
        let taken: Vec<_> = (0..POOLED).map(|_| app.call(bare_request())).collect();
        // ...and every head there now is one without a map (a head made
        // afresh, as for an empty pool, has room for 16 headers).
        let heads: Vec<Request> = (0..POOLED).map(|_| Request::new()).collect();
        let with_maps = heads.iter().filter(|r| r.headers().capacity() > 0).count();
        assert_eq!(with_maps, 0, "of {POOLED} pooled heads");
        drop(heads);
        drop(taken);
        let res = app.call(with_headers()).await.unwrap();
        assert!(res.status().is_success());
    }

    #[actix_web::test]
    async fn a_request_keeps_its_headers_in_a_map_of_its_size() {
        // Sorted: each map hashes with its own seed, so two maps holding the
        // same headers may iterate them in different orders.
        fn sorted(req: &Request) -> Vec<(String, Vec<u8>)> {
            let mut all: Vec<_> = req
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            all.sort();
            all
        }
        let mut req = with_headers();
        let before = sorted(&req);
        own_headers(&mut req);
        let after = sorted(&req);
        assert_eq!(before.len(), 2);
        assert_eq!(before, after);
        assert!(
            req.headers().capacity() < 16,
            "{}",
            req.headers().capacity()
        );
    }
}
