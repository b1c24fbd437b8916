//! The benchmark's floor: a reverse proxy made of hyper and tokio alone, with none of the
//! gateway's stages (no identity, limits, request id, cache, audit, metrics, timeouts or header
//! hygiene beyond Host and Authorization). It runs the way the gateway does (one single-threaded
//! runtime per worker, SO_REUSEPORT listeners, the upstream answer read whole), so the distance
//! between it and nginx is what the frameworks cost, and the distance between it and the gateway
//! is what the gateway's own work costs.
//!
//!     hyper-floor LISTEN_ADDR UPSTREAM_ADDR [WORKERS]
//!
//! Each caller connection gets its own upstream connection, opened on its first request. Used by
//! bench/run.py only; loopback only.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Rc<RefCell<Option<SendRequest<Full<Bytes>>>>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: hyper-floor LISTEN_ADDR UPSTREAM_ADDR [WORKERS]";
    let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let workers: usize = args.get(3).and_then(|w| w.parse().ok()).unwrap_or(1);
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| std::thread::spawn(move || serve(listen, upstream)))
        .collect();
    for thread in threads {
        thread.join().expect("a worker panicked");
    }
}

/// One worker: its own runtime and listener; every connection is served on this thread.
fn serve(listen: SocketAddr, upstream: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(listen).expect("bind");
        let listener = socket.listen(4096).expect("listen");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(async move {
                let connection: Upstream = Rc::default();
                let service = hyper::service::service_fn(move |request| {
                    forward(connection.clone(), upstream, request)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Sends one request upstream with the bench's token and passes the answer back.
async fn forward(
    connection: Upstream,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        if name != header::AUTHORIZATION && name != header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1"));
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer bench-token"),
    );
    let mut outgoing = Request::new(Full::new(body));
    *outgoing.method_mut() = parts.method;
    if let Some(target) = parts.uri.path_and_query() {
        *outgoing.uri_mut() = Uri::from(target.clone());
    }
    *outgoing.headers_mut() = headers;

    let reused = connection.borrow_mut().take();
    let mut sender = match reused {
        Some(sender) => sender,
        None => {
            let stream = tokio::net::TcpStream::connect(upstream)
                .await
                .expect("the bench's upstream is listening");
            let _ = stream.set_nodelay(true);
            let (sender, driver) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(driver);
            sender
        }
    };
    sender.ready().await?;
    let (mut head, body) = sender.send_request(outgoing).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    *connection.borrow_mut() = Some(sender);
    head.headers.remove(header::CONNECTION);
    Ok(Response::from_parts(head, Full::new(body)))
}
