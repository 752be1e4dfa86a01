//! Fetching feeds from a real HTTP server on loopback that answers every way a feed server
//! does: 200 with validators, 304, 404, 500, 503 with Retry-After, slow, truncated, oversized,
//! gzip, an HTML error page, and garbage.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{HttpServer, Reply};

use threatflow::feeds::fetch::{FetchError, FetchSettings, Fetched, Fetcher, Validators};
use threatflow::feeds::format::{self, FeedFormat};

const FEED: &str = include_str!("../connectors/feeds/fixtures/feodo.txt");
const FEED_GZ: &[u8] = include_bytes!("fixtures/feodo.txt.gz");

/// A feed server answering every way feed servers do, on the shared HTTP harness.
async fn feed_server() -> HttpServer {
    let busy = Arc::new(AtomicUsize::new(0));
    HttpServer::start(move |request| {
        let text = |status, headers: &[(&str, &str)], body: &[u8]| {
            headers
                .iter()
                .fold(Reply::status(status, body), |reply, (name, value)| {
                    reply.with_header(name, value)
                })
        };
        match request.path() {
            "/feed" if request.header("if-none-match") == Some("\"v1\"") => {
                text(304, &[("ETag", "\"v1\"")], b"")
            }
            "/feed" => {
                assert_eq!(
                    request.header("authorization"),
                    Some("Bearer s3cret"),
                    "the configured header is sent"
                );
                text(
                    200,
                    &[
                        ("Content-Type", "text/plain"),
                        ("ETag", "\"v1\""),
                        ("Last-Modified", "Tue, 07 Oct 2025 10:46:43 GMT"),
                    ],
                    FEED.as_bytes(),
                )
            }
            "/missing" => Reply::status(404, "no such feed"),
            "/always-304" => Reply::status(304, ""),
            "/moved" => text(301, &[("Location", "/gzip")], b""),
            "/loop" => text(302, &[("Location", "/loop")], b""),
            "/broken" => Reply::status(500, "oops"),
            "/busy" if busy.fetch_add(1, Ordering::SeqCst) < 2 => {
                text(503, &[("Retry-After", "0")], b"busy")
            }
            "/busy" => Reply::ok(FEED),
            "/slow" => Reply::ok(FEED).delayed(Duration::from_secs(5)),
            "/truncated" => {
                let mut response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    FEED.len()
                )
                .into_bytes();
                response.extend_from_slice(&FEED.as_bytes()[..FEED.len() / 3]);
                Reply::Raw(response)
            }
            "/oversized" => Reply::ok(vec![b'1'; 2 * 1024 * 1024]),
            // No length: a stream that goes on past any sane cap.
            "/endless" => Reply::Endless {
                chunk: b"10.0.0.1\n".repeat(10_000),
                times: 100,
            },
            "/gzip" => text(
                200,
                &[("Content-Encoding", "gzip"), ("Content-Type", "text/plain")],
                FEED_GZ,
            ),
            "/html" => text(
                200,
                &[("Content-Type", "text/html; charset=utf-8")],
                b"<html><body>Please log in</body></html>",
            ),
            "/garbage" => text(
                200,
                &[("Content-Type", "text/plain")],
                b"\x00\x01binary junk\nmore ### junk\n",
            ),
            _ => Reply::status(404, ""),
        }
    })
    .await
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
    let server = feed_server().await;
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
    let server = feed_server().await;
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
    let server = feed_server().await;
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
    let server = feed_server().await;
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
    let plain = plain_base.to_owned();
    let server = HttpServer::start_tls(dir, move |request| match request.path() {
        "/downgrade" => Reply::status(302, "").with_header("Location", &format!("{plain}/busy")),
        _ => Reply::ok(FEED),
    })
    .await;
    server.base
}

#[tokio::test]
async fn https_feeds_under_a_private_ca_and_no_redirect_to_plain_http() {
    let plain = feed_server().await;
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
        plain.hits("/busy"),
        0,
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
