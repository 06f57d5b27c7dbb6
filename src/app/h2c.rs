//! HTTP/1.1 and HTTP/2 with prior knowledge on one listener.
//!
//! actix-http's `HttpService::tcp_auto_h2c` does this too, but its
//! connection future is one enum of both protocols: every connection's task
//! was sized for an HTTP/2 one, 2,816 bytes for each open HTTP/1.1 stream
//! against 1,536 with HTTP/1.1's alone. Here an HTTP/1.1 connection's
//! future holds only HTTP/1.1's dispatcher, and an HTTP/2 one (rare: only
//! clients told to use prior knowledge send it) is boxed.

use std::net::SocketAddr;
use std::rc::Rc;

use actix_http::error::DispatchError;
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::rt::net::TcpStream;

/// The first bytes of an HTTP/2 connection preface (RFC 9113 §3.4), as
/// actix-http peeks them: enough to tell the two apart in one read.
const H2_PREFACE: &[u8; 12] = b"PRI * HTTP/2";

/// A connection as actix-http's protocol services take it: the stream and
/// its peer.
type Connection = (TcpStream, Option<SocketAddr>);

/// A TCP connection served by `h2` if it opens with the HTTP/2 preface and
/// by `h1` otherwise: actix-http's `HttpServiceBuilder::h1` and `::h2`.
pub(crate) fn auto_h2c<F1, F2>(
    h1: F1,
    h2: F2,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = DispatchError, InitError = ()>
where
    F1: ServiceFactory<
        Connection,
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
    F2: ServiceFactory<
        Connection,
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
    F1: 'static,
    F2: 'static,
    F1::Service: 'static,
    F2::Service: 'static,
{
    fn_factory(move || {
        let (h1, h2) = (h1.new_service(()), h2.new_service(()));
        async move {
            // actix-http's protocol services report no reason (`()`).
            let h1 = Rc::new(
                h1.await
                    .map_err(|()| tracing::error!("HTTP/1.1 service failed to start"))?,
            );
            let h2 = Rc::new(
                h2.await
                    .map_err(|()| tracing::error!("HTTP/2 service failed to start"))?,
            );
            Ok(fn_service(move |io: TcpStream| {
                let (h1, h2) = (h1.clone(), h2.clone());
                async move {
                    let mut buf = [0; H2_PREFACE.len()];
                    io.peek(&mut buf).await?;
                    let peer = io.peer_addr().ok();
                    if &buf == H2_PREFACE {
                        Box::pin(h2.call((io, peer))).await
                    } else {
                        h1.call((io, peer)).await
                    }
                }
            }))
        }
    })
}
