//! The pull endpoint: every group as a plain-text list of IPs, one per line, at
//! `/v1/groups/<name>.txt` (`/v1/groups` lists the names). A FortiGate external threat feed
//! (type address) or a PAN-OS External Dynamic List polls it, so no firewall credential lives
//! in the cluster.
//!
//! Each list carries an `ETag`; a request with a matching `If-None-Match` gets `304 Not
//! Modified`. Until the cluster's initial lists are in, every list answers `503`, so a firewall
//! keeps what it has rather than loading an empty list. HTTP Basic authentication and TLS are
//! optional; the password is compared in constant time and never logged.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::ServeConfig;
use super::groups::Published;

/// What the endpoint needs at run time.
#[derive(Clone)]
struct Endpoint {
    published: watch::Receiver<Option<Arc<Published>>>,
    /// The expected `Authorization` header value, when Basic auth is on.
    authorization: Option<Arc<str>>,
}

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on firewall.serve.listen_addr {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("firewall.serve.tls")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error("firewall.serve.basic_auth.password")]
    Secret(#[from] crate::secret::SecretError),
}

/// Binds and serves until `stop`.
pub async fn start(
    config: &ServeConfig,
    published: watch::Receiver<Option<Arc<Published>>>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let authorization = match &config.basic_auth {
        Some(auth) => {
            let password = auth.password.read("firewall.serve.basic_auth.password")?;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", auth.username));
            Some(Arc::from(format!("Basic {token}")))
        }
        None => None,
    };
    let tls = match &config.tls {
        Some(tls) => {
            crate::net::tls::install_provider();
            let server = crate::net::tls::server_config(&tls.cert_file, &tls.key_file)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        }
        None => None,
    };
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen_addr,
            source,
        })?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(addr = %bound, tls = tls.is_some(), "serving firewall group lists on /v1/groups/<name>.txt");
    }
    let endpoint = Endpoint {
        published,
        authorization,
    };
    Ok(tokio::spawn(accept(listener, tls, endpoint, stop)))
}

async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    endpoint: Endpoint,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "the firewall list listener failed to accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (endpoint, tls, stop) = (endpoint.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&endpoint, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-cache")
        .body(Full::new(body.into()))
        .expect("a static response is valid")
}

/// Compares without stopping at the first difference.
fn same(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

fn respond(endpoint: &Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(expected) = &endpoint.authorization {
        let given = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if !same(given, expected.as_bytes()) {
            let mut response = text(StatusCode::UNAUTHORIZED, "authentication required\n");
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"threatflow\""),
            );
            return response;
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let Some(published) = endpoint.published.borrow().clone() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster's initial lists are not in yet\n",
        );
    };
    let path = request.uri().path();
    if path == "/v1/groups" || path == "/v1/groups/" {
        let names: String = published
            .groups
            .keys()
            .map(|name| format!("{name}\n"))
            .collect();
        return text(StatusCode::OK, names);
    }
    let Some(name) = path
        .strip_prefix("/v1/groups/")
        .and_then(|rest| rest.strip_suffix(".txt"))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /v1/groups or /v1/groups/<name>.txt\n",
        );
    };
    let Some(list) = published.list(name) else {
        return text(StatusCode::NOT_FOUND, format!("no group named {name}\n"));
    };
    let etag = format!("\"{:016x}\"", crate::k8s::apply::fnv1a(list.as_bytes()));
    let matches = request
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*")
        });
    let mut response = if matches {
        text(StatusCode::NOT_MODIFIED, Bytes::new())
    } else if request.method() == Method::HEAD {
        text(StatusCode::OK, Bytes::new())
    } else {
        text(StatusCode::OK, list)
    };
    response.headers_mut().insert(
        hyper::header::ETAG,
        hyper::header::HeaderValue::from_str(&etag).expect("hex in quotes is a valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison_is_still_a_comparison() {
        assert!(same(b"Basic abc", b"Basic abc"));
        assert!(!same(b"Basic abd", b"Basic abc"));
        assert!(!same(b"Basic ab", b"Basic abc"));
    }
}
