//! Fetching feeds from a real HTTP server on loopback that answers every way a feed server
//! does: 200 with validators, 304, 404, 500, 503 with Retry-After, slow, truncated, oversized,
//! gzip, an HTML error page, and garbage.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use threatflow::feeds::fetch::{FetchError, FetchSettings, Fetched, Fetcher, Validators};
use threatflow::feeds::format::{self, FeedFormat};

const FEED: &str = include_str!("../connectors/feeds/fixtures/feodo.txt");
const FEED_GZ: &[u8] = include_bytes!("fixtures/feodo.txt.gz");

/// An HTTP request's head, or `None` when the client went away first.
async fn read_request(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
    }
    Some(String::from_utf8_lossy(&request).into_owned())
}

/// A feed server; `hits` counts requests per path.
struct FeedServer {
    base: String,
    hits: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

impl FeedServer {
    async fn start() -> FeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let hits = counter.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let header = |name: &str| {
                        request
                            .lines()
                            .find(|line| line.to_ascii_lowercase().starts_with(&format!("{name}:")))
                            .map(|line| line.split_once(':').unwrap().1.trim().to_owned())
                    };
                    let count = {
                        let mut hits = hits.lock().unwrap();
                        let count = hits.entry(path.clone()).or_default();
                        *count += 1;
                        *count
                    };
                    let respond = |status: &str, headers: &str, body: &[u8]| {
                        let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n", body.len()).into_bytes();
                        response.extend_from_slice(body);
                        response
                    };
                    let response = match path.as_str() {
                        "/feed" => {
                            if header("if-none-match").as_deref() == Some("\"v1\"") {
                                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n".to_vec()
                            } else {
                                assert_eq!(
                                    header("authorization").as_deref(),
                                    Some("Bearer s3cret"),
                                    "the configured header is sent"
                                );
                                respond("200 OK", "Content-Type: text/plain\r\nETag: \"v1\"\r\nLast-Modified: Tue, 07 Oct 2025 10:46:43 GMT\r\n", FEED.as_bytes())
                            }
                        }
                        "/missing" => respond("404 Not Found", "", b"no such feed"),
                        "/always-304" => {
                            b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_vec()
                        }
                        "/moved" => respond("301 Moved Permanently", "Location: /gzip\r\n", b""),
                        "/loop" => respond("302 Found", "Location: /loop\r\n", b""),
                        "/broken" => respond("500 Internal Server Error", "", b"oops"),
                        "/busy" if count < 3 => {
                            respond("503 Service Unavailable", "Retry-After: 0\r\n", b"busy")
                        }
                        "/busy" => respond("200 OK", "", FEED.as_bytes()),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            respond("200 OK", "", FEED.as_bytes())
                        }
                        "/truncated" => {
                            let mut response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", FEED.len()).into_bytes();
                            response.extend_from_slice(&FEED.as_bytes()[..FEED.len() / 3]);
                            response
                        }
                        "/oversized" => respond("200 OK", "", &vec![b'1'; 2 * 1024 * 1024]),
                        "/endless" => {
                            // No length: a stream that goes on past any sane cap.
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                                .await;
                            let line = b"10.0.0.1\n".repeat(10_000);
                            for _ in 0..100 {
                                if stream.write_all(&line).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                        "/gzip" => respond(
                            "200 OK",
                            "Content-Encoding: gzip\r\nContent-Type: text/plain\r\n",
                            FEED_GZ,
                        ),
                        "/html" => respond(
                            "200 OK",
                            "Content-Type: text/html; charset=utf-8\r\n",
                            b"<html><body>Please log in</body></html>",
                        ),
                        "/garbage" => respond(
                            "200 OK",
                            "Content-Type: text/plain\r\n",
                            b"\x00\x01binary junk\nmore ### junk\n",
                        ),
                        _ => respond("404 Not Found", "", b""),
                    };
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        FeedServer { base, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn fetcher() -> Fetcher {
    Fetcher::new(FetchSettings {
        http: threatflow::net::http::HttpSettings {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_millis(800),
            ..Default::default()
        },
        max_body_bytes: 1024 * 1024,
        retries: 3,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    })
    .unwrap()
}

fn token() -> Vec<(String, String)> {
    vec![("Authorization".to_owned(), "Bearer s3cret".to_owned())]
}

fn entries(fetched: &Fetched) -> usize {
    let Fetched::Content { body, .. } = fetched else {
        panic!("expected content")
    };
    let feed = format::parse(&FeedFormat::default(), body).unwrap();
    assert!(feed.rejected.is_empty());
    feed.v4.len()
}

#[tokio::test]
async fn conditional_requests_and_validators() {
    let server = FeedServer::start().await;
    let fetched = fetcher()
        .fetch(&server.url("/feed"), &token(), &Validators::default())
        .await
        .unwrap();
    assert_eq!(entries(&fetched), 5);
    let Fetched::Content { validators, .. } = fetched else {
        unreachable!()
    };
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    assert_eq!(
        validators.last_modified.as_deref(),
        Some("Tue, 07 Oct 2025 10:46:43 GMT")
    );
    let again = fetcher()
        .fetch(&server.url("/feed"), &token(), &validators)
        .await
        .unwrap();
    assert_eq!(again, Fetched::NotModified);
    // A 304 to a request without validators is a broken server, not "no change".
    let error = fetcher()
        .fetch(&server.url("/always-304"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Status { status, .. } if status.as_u16() == 304),
        "{error:?}"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_server_errors_are() {
    let server = FeedServer::start().await;
    let error = fetcher()
        .fetch(&server.url("/missing"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, FetchError::Status { status, .. } if status.as_u16() == 404),
        "{error}"
    );
    assert_eq!(server.hits("/missing"), 1);

    let error = fetcher()
        .fetch(&server.url("/broken"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "status");
    assert_eq!(
        server.hits("/broken"),
        4,
        "the first attempt and three retries"
    );

    let fetched = fetcher()
        .fetch(&server.url("/busy"), &[], &Validators::default())
        .await
        .unwrap();
    assert_eq!(entries(&fetched), 5, "Retry-After honoured, then success");
    assert_eq!(server.hits("/busy"), 3);
}

#[tokio::test]
async fn slow_truncated_and_oversized_responses_fail_with_a_reason() {
    let server = FeedServer::start().await;
    let error = fetcher()
        .fetch(&server.url("/slow"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "timeout", "{error}");

    let error = fetcher()
        .fetch(&server.url("/truncated"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "body", "{error:?}");

    let error = fetcher()
        .fetch(&server.url("/oversized"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "too_large");
    assert_eq!(
        server.hits("/oversized"),
        1,
        "an oversized feed is not fetched again at once"
    );

    let error = fetcher()
        .fetch(&server.url("/endless"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "too_large", "{error:?}");
}

#[tokio::test]
async fn gzip_html_and_garbage() {
    let server = FeedServer::start().await;
    let fetched = fetcher()
        .fetch(&server.url("/gzip"), &[], &Validators::default())
        .await
        .unwrap();
    assert_eq!(entries(&fetched), 5);

    let fetched = fetcher()
        .fetch(&server.url("/moved"), &[], &Validators::default())
        .await
        .unwrap();
    assert_eq!(entries(&fetched), 5, "a redirect is followed");
    let error = fetcher()
        .fetch(&server.url("/loop"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "request", "{error:?}");
    assert!(
        server.hits("/loop") <= 6 * 4,
        "redirect loops are cut short"
    );

    let error = fetcher()
        .fetch(&server.url("/html"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "html");

    // Garbage arrives; the format counts every line as rejected, and the (empty) result is
    // what the shrink guard then refuses.
    let Fetched::Content { body, .. } = fetcher()
        .fetch(&server.url("/garbage"), &[], &Validators::default())
        .await
        .unwrap()
    else {
        panic!()
    };
    let feed = format::parse(&FeedFormat::default(), &body).unwrap();
    assert!(feed.v4.is_empty());
    assert_eq!(feed.rejected_summary(), "invalid_entry=2");
}

#[tokio::test]
async fn files_and_bad_urls() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/feeds/fixtures/feodo.txt"
    );
    let fetched = fetcher()
        .fetch(&format!("file://{path}"), &[], &Validators::default())
        .await
        .unwrap();
    assert_eq!(entries(&fetched), 5);
    let error = fetcher()
        .fetch("file:///nonexistent/feed.txt", &[], &Validators::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "file");
    let error = fetcher()
        .fetch(
            "ftp://user:s3cret@example.com/feed?key=s3cret",
            &[],
            &Validators::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "url");
    assert!(!error.to_string().contains("s3cret"), "{error}");
    // Nothing listens on a freshly closed port: a connection failure, retried, then reported.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = fetcher()
        .fetch(
            &format!("http://127.0.0.1:{port}/feed"),
            &[],
            &Validators::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "request");
}

/// An https feed server under a test CA (`common::pki`): `/feed` serves the feed,
/// `/downgrade` redirects to the same feed over plain http.
async fn https_feed_server(dir: &std::path::Path, plain_base: &str) -> String {
    common::pki::make(dir);
    let acceptor = tokio_rustls::TlsAcceptor::from(common::pki::server_config(dir));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = plain_base.to_owned();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, plain) = (acceptor.clone(), plain.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let Some(request) = read_request(&mut stream).await else {
                    return;
                };
                let response = match request.split_whitespace().nth(1) {
                    Some("/downgrade") => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {plain}/busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    _ => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{FEED}",
                        FEED.len()
                    ),
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("https://localhost:{port}")
}

#[tokio::test]
async fn https_feeds_under_a_private_ca_and_no_redirect_to_plain_http() {
    let plain = FeedServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = https_feed_server(dir.path(), &plain.base).await;
    let settings = threatflow::feeds::config::FeedSettings {
        ca_file: Some(dir.path().join("ca.pem")),
        retries: 0,
        ..Default::default()
    };
    let fetcher = threatflow::feeds::sync::fetcher(&settings).unwrap();
    match fetcher
        .fetch(&format!("{base}/feed"), &[], &Validators::default())
        .await
        .unwrap()
    {
        Fetched::Content { body, .. } => assert_eq!(body, FEED.as_bytes()),
        other => panic!("{other:?}"),
    }
    let refused = fetcher
        .fetch(&format!("{base}/downgrade"), &[], &Validators::default())
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("refusing to follow a redirect from https to plain http"),
        "{refused:?}"
    );
    assert_eq!(
        plain.hits.lock().unwrap().get("/busy"),
        None,
        "the plain http server was never asked"
    );
    // Without the CA, the private certificate is refused.
    let untrusting = threatflow::feeds::sync::fetcher(&threatflow::feeds::config::FeedSettings {
        retries: 0,
        ..Default::default()
    })
    .unwrap();
    assert!(untrusting
        .fetch(&format!("{base}/feed"), &[], &Validators::default())
        .await
        .is_err());
}
