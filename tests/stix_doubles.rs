//! The TAXII 2.1 and FortiGuard Premium API doubles against a plain HTTPS client: the replies
//! a feed client has to read, so tests of the real clients can trust the doubles.

mod common;

use std::io::Read as _;

use serde_json::{json, Value};

use common::fortiguard::{self as fgd, FortiGuard};
use common::http::client_trusting as client;
use common::taxii::{self, Taxii};

/// A reply as a TAXII client sees it.
struct Page {
    status: u16,
    content_type: String,
    first: Option<String>,
    last: Option<String>,
    body: Value,
}

impl Page {
    fn ids(&self) -> Vec<String> {
        self.body["objects"]
            .as_array()
            .map(|objects| {
                objects
                    .iter()
                    .map(|object| object["id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A reply's body as JSON (reqwest is built without its `json` feature).
async fn json_body(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// GETs `url` with `authorization` (when given) and `accept`.
async fn get(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
    accept: &str,
) -> Page {
    let mut request = client.get(url).header("Accept", accept);
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let (status, content_type) = (
        response.status().as_u16(),
        header("content-type").unwrap_or_default(),
    );
    let (first, last) = (
        header("x-taxii-date-added-first"),
        header("x-taxii-date-added-last"),
    );
    let body = json_body(response).await;
    Page {
        status,
        content_type,
        first,
        last,
        body,
    }
}

const COLLECTION: &str = "365fed99-08fa-fdcd-a1b3-fb247eb41d01";
const RESTRICTED: &str = "91a7b528-80eb-42ed-a74d-c6fbd5a26116";

fn indicator(n: usize) -> Value {
    json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--00000000-0000-4000-8000-{n:012}"),
        "created": "2025-05-01T00:00:00.000Z",
        "modified": "2025-05-01T00:00:00.000Z",
        "pattern": format!("[ipv4-addr:value = '198.51.100.{n}']"),
        "pattern_type": "stix",
        "valid_from": "2025-05-01T00:00:00.000Z",
    })
}

async fn taxii_double(dir: &std::path::Path) -> (Taxii, reqwest::Client, String) {
    let double = Taxii::start(dir, taxii::Knobs::default()).await;
    double.add_collection(COLLECTION, "Indicators", true);
    double.add_collection(RESTRICTED, "Restricted", false);
    let auth = taxii::basic("taxii-user", "taxii-password");
    (double, client(dir), auth)
}

/// Follows `next` from `url` until `more` is false; every page's ids and date headers.
async fn walk(
    client: &reqwest::Client,
    auth: &str,
    url: &str,
    mut between_pages: impl FnMut(usize),
) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page_url = match &next {
            Some(token) => format!("{url}&next={token}"),
            None => url.to_owned(),
        };
        let page = get(client, &page_url, Some(auth), taxii::MEDIA_TYPE).await;
        assert_eq!(page.status, 200, "{}", page.body);
        next = page.body["next"].as_str().map(str::to_owned);
        let more = page.body["more"] == json!(true);
        assert_eq!(
            more,
            next.is_some(),
            "next exactly when more: {}",
            page.body
        );
        pages.push(page);
        if !more {
            return pages;
        }
        between_pages(pages.len());
    }
}

/// Discovery leads to the API root and the collection; `limit` and `next` page through every
/// object exactly once in the order added (objects added mid-walk included), with the date
/// headers of each page; `limit` is clamped to the page size; `added_after` is strictly after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_discovery_leads_to_objects_that_page_once_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (double, client, auth) = taxii_double(dir.path()).await;
    let mut added = Vec::new();
    for n in 0..23 {
        added.push((indicator(n), double.add_now(COLLECTION, indicator(n))));
    }

    let discovery = get(
        &client,
        &double.discovery_url(),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(discovery.status, 200);
    assert_eq!(discovery.content_type, taxii::MEDIA_TYPE);
    let root = discovery.body["default"].as_str().unwrap().to_owned();
    assert_eq!(root, double.api_root_url());
    assert_eq!(discovery.body["api_roots"], json!([root]));
    assert!(discovery.body["title"].is_string());

    let api_root = get(&client, &root, Some(&auth), taxii::MEDIA_TYPE).await;
    assert_eq!(api_root.body["versions"], json!([taxii::MEDIA_TYPE]));
    assert!(api_root.body["max_content_length"].as_u64().unwrap() > 0);

    let collections = get(
        &client,
        &format!("{root}collections/"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    let listed = collections.body["collections"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let readable = listed.iter().find(|c| c["id"] == COLLECTION).unwrap();
    assert_eq!(readable["can_read"], true);
    assert_eq!(readable["can_write"], false);
    assert_eq!(readable["media_types"], json!([taxii::STIX_MEDIA_TYPE]));
    let one = get(
        &client,
        &format!("{root}collections/{COLLECTION}/"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(&one.body, readable);

    // Pages of 7; two objects arrive after the first page and must come at the end, once.
    let objects = format!("{root}collections/{COLLECTION}/objects/");
    let pages = walk(&client, &auth, &format!("{objects}?limit=7"), |served| {
        if served == 1 {
            for n in 23..25 {
                added.push((indicator(n), double.add_now(COLLECTION, indicator(n))));
            }
        }
    })
    .await;
    let sizes: Vec<usize> = pages.iter().map(|page| page.ids().len()).collect();
    assert_eq!(sizes, [7, 7, 7, 4]);
    let served: Vec<String> = pages.iter().flat_map(Page::ids).collect();
    let expected: Vec<String> = added
        .iter()
        .map(|(object, _)| object["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served, expected);
    let mut offset = 0;
    for page in &pages {
        assert_eq!(page.content_type, taxii::MEDIA_TYPE);
        let count = page.ids().len();
        assert_eq!(page.first.as_deref(), Some(added[offset].1.as_str()));
        assert_eq!(
            page.last.as_deref(),
            Some(added[offset + count - 1].1.as_str())
        );
        offset += count;
    }
    assert!(pages.last().unwrap().body.get("next").is_none());

    // A larger limit than the page size is clamped to it.
    double.set_page_size(10);
    let clamped = get(
        &client,
        &format!("{objects}?limit=50"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(clamped.ids().len(), 10);
    assert_eq!(clamped.body["more"], true);

    // Strictly after: the object stamped with `added_after` itself is not served again.
    let after = &added[14].1;
    let page = get(
        &client,
        &format!("{objects}?added_after={after}"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(page.ids(), expected[15..25].to_vec());
    assert_eq!(page.body["more"], false);
    assert!(page.body.get("next").is_none());

    // Nothing after the newest: an empty envelope without date headers.
    let newest = &added[24].1;
    let empty = get(
        &client,
        &format!("{objects}?added_after={newest}"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body, json!({}));
    assert_eq!((empty.first, empty.last), (None, None));

    // Every page request was logged with the credentials and media type the client sent.
    let object_requests: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|request| request.path().ends_with("/objects/"))
        .collect();
    assert_eq!(object_requests.len(), 7);
    assert!(object_requests
        .iter()
        .all(|request| request.header("accept") == Some(taxii::MEDIA_TYPE)));
}

/// With tokens off, a page says `more` without `next`, and `added_after` set to each page's
/// `X-TAXII-Date-Added-Last` walks every object once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_without_next_tokens_pages_by_date_added() {
    let dir = tempfile::tempdir().unwrap();
    let (double, client, auth) = taxii_double(dir.path()).await;
    double.set_next_tokens(false);
    double.set_page_size(4);
    for n in 0..10 {
        double.add(
            COLLECTION,
            indicator(n),
            &format!("2025-06-01T00:00:{n:02}.123456Z"),
        );
    }
    let objects = format!("{}collections/{COLLECTION}/objects/", double.api_root_url());
    let mut served = Vec::new();
    let mut url = objects.clone();
    loop {
        let page = get(&client, &url, Some(&auth), taxii::MEDIA_TYPE).await;
        assert!(page.body.get("next").is_none());
        served.extend(page.ids());
        if page.body["more"] != true {
            break;
        }
        url = format!("{objects}?added_after={}", page.last.unwrap());
    }
    let expected: Vec<String> = (0..10)
        .map(|n| indicator(n)["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served, expected);
}

/// A newer `modified` is a new version: by default only the latest is served, at its own
/// date added; `match[version]=all` serves both and `first` the oldest; `match[id]` and
/// `match[type]` filter; the same version again is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_serves_the_latest_version_unless_asked_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let (double, client, auth) = taxii_double(dir.path()).await;
    assert!(double.add(COLLECTION, indicator(1), "2025-06-01T00:00:01Z"));
    assert!(double.add(COLLECTION, indicator(2), "2025-06-01T00:00:02Z"));
    let mut revoked = indicator(1);
    revoked["modified"] = json!("2025-06-02T00:00:00.000Z");
    revoked["revoked"] = json!(true);
    assert!(double.add(COLLECTION, revoked.clone(), "2025-06-02T00:00:03Z"));
    assert!(!double.add(COLLECTION, indicator(2), "2025-06-02T00:00:04Z"));
    assert_eq!(double.stored(COLLECTION).len(), 3);

    let objects = format!("{}collections/{COLLECTION}/objects/", double.api_root_url());
    let latest = get(&client, &objects, Some(&auth), taxii::MEDIA_TYPE).await;
    assert_eq!(latest.body["objects"], json!([indicator(2), revoked]));
    assert_eq!(latest.first.as_deref(), Some("2025-06-01T00:00:02.000Z"));
    assert_eq!(latest.last.as_deref(), Some("2025-06-02T00:00:03.000Z"));

    let all = get(
        &client,
        &format!("{objects}?match%5Bversion%5D=all"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(
        all.body["objects"],
        json!([indicator(1), indicator(2), revoked])
    );

    let first = get(
        &client,
        &format!("{objects}?match%5Bversion%5D=first"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(first.body["objects"], json!([indicator(1), indicator(2)]));
    let id = indicator(2)["id"].as_str().unwrap().to_owned();
    let by_id = get(
        &client,
        &format!("{objects}?match%5Bid%5D={id}&match%5Btype%5D=indicator"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(by_id.body["objects"], json!([indicator(2)]));
    let by_type = get(
        &client,
        &format!("{objects}?match%5Btype%5D=identity"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(by_type.body, json!({}));

    let since = get(
        &client,
        &format!("{objects}?added_after=2025-06-01T00:00:02Z"),
        Some(&auth),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(since.body["objects"], json!([revoked]));
}

/// A wrong `Accept` gets 406, missing or wrong credentials 401 (both Basic and bearer are
/// honoured), an unreadable collection 403, an unknown one 404, an unknown `next` 400; every
/// error is a TAXII error resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_refuses_wrong_media_types_credentials_and_collections() {
    let dir = tempfile::tempdir().unwrap();
    let (double, client, auth) = taxii_double(dir.path()).await;
    double.add_now(COLLECTION, indicator(1));
    let root = double.api_root_url();
    let objects = format!("{root}collections/{COLLECTION}/objects/");
    let check = |page: &Page, status: u16| {
        assert_eq!(page.status, status, "{}", page.body);
        assert_eq!(page.content_type, taxii::MEDIA_TYPE);
        assert_eq!(page.body["http_status"], status.to_string());
        assert!(page.body["title"].is_string());
    };

    for accept in ["application/json", "application/taxii+json", "*/*"] {
        check(&get(&client, &objects, Some(&auth), accept).await, 406);
    }
    let listed = get(
        &client,
        &objects,
        Some(&auth),
        "application/json, application/taxii+json; version=2.1",
    )
    .await;
    assert_eq!(listed.ids().len(), 1);

    check(&get(&client, &objects, None, taxii::MEDIA_TYPE).await, 401);
    let wrong = taxii::basic("taxii-user", "wrong");
    check(
        &get(&client, &objects, Some(&wrong), taxii::MEDIA_TYPE).await,
        401,
    );
    check(
        &get(&client, &objects, Some("Bearer wrong"), taxii::MEDIA_TYPE).await,
        401,
    );
    let bearer = get(
        &client,
        &objects,
        Some("Bearer taxii-token"),
        taxii::MEDIA_TYPE,
    )
    .await;
    assert_eq!(bearer.ids().len(), 1);
    // Credentials are checked before the media type.
    check(&get(&client, &objects, None, "application/json").await, 401);

    check(
        &get(
            &client,
            &format!("{root}collections/{RESTRICTED}/objects/"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        403,
    );
    check(
        &get(
            &client,
            &format!("{root}collections/no-such-collection/objects/"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        404,
    );
    check(
        &get(
            &client,
            &format!("{objects}?next=bogus"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        400,
    );
    check(
        &get(
            &client,
            &format!("{objects}?limit=0"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        400,
    );
    check(
        &get(
            &client,
            &format!("{objects}?added_after=yesterday"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        400,
    );

    // A token from one collection is no good for another, and none survives a restart.
    double.set_page_size(1);
    double.add_now(COLLECTION, indicator(2));
    let first = get(&client, &objects, Some(&auth), taxii::MEDIA_TYPE).await;
    let token = first.body["next"].as_str().unwrap();
    check(
        &get(
            &client,
            &format!("{root}collections/{RESTRICTED}/objects/?next={token}"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        403,
    );
    double.add_collection("other", "Other", true);
    check(
        &get(
            &client,
            &format!("{root}collections/other/objects/?next={token}"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        400,
    );
    double.forget_next_tokens();
    check(
        &get(
            &client,
            &format!("{objects}?next={token}"),
            Some(&auth),
            taxii::MEDIA_TYPE,
        )
        .await,
        400,
    );
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The feed needs the token; its download URL, on another host, needs none and serves the
/// bundle gzip-compressed; a download that carries the token is recorded; mangled and
/// expired URLs get 403; the health check answers 404 with a good token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortiguard_feed_needs_the_token_and_downloads_a_gzip_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let double = FortiGuard::start(dir.path(), fgd::Knobs::default()).await;
    let client = client(dir.path());
    let feed = double.feed_url("all");
    let token = "fortiguard-token";

    let status = |response: &reqwest::Response| response.status().as_u16();
    let response = client.get(&feed).send().await.unwrap();
    assert_eq!(status(&response), 401);
    let response = client
        .get(&feed)
        .header("Token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(status(&response), 401);
    let health = format!("{}/v1/fgd/psirt/detail?id=1", double.url());
    let response = client
        .get(&health)
        .header("Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(status(&response), 404);
    let response = client.get(&health).send().await.unwrap();
    assert_eq!(status(&response), 401);
    let response = client
        .get(format!("{}/v1/cti/feed/stix2", double.url()))
        .header("Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(status(&response), 400, "cc is required");

    let bundle = json!({
        "type": "bundle",
        "id": "bundle--6f1f5d2a-1b3c-4d5e-8f90-123456789abc",
        "objects": [fgd::sample_bundle()["objects"][0], indicator(7)],
    });
    double.set_bundle(&bundle);
    let listing = client
        .get(&feed)
        .header("Token", token)
        .send()
        .await
        .unwrap();
    let listing = json_body(listing).await;
    let url = listing[0]["data"].as_str().unwrap().to_owned();
    assert_eq!(listing.as_array().unwrap().len(), 1);
    assert_eq!(double.download_urls(), std::slice::from_ref(&url));
    assert!(url.starts_with(&double.download.base));
    assert_ne!(double.download.base, double.url(), "another origin");

    let response = client.get(&url).send().await.unwrap();
    assert_eq!(status(&response), 200);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    assert!(response.headers().get("content-encoding").is_none());
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..2], [0x1f, 0x8b], "gzip magic");
    let decoded: Value = serde_json::from_slice(&gunzip(&body)).unwrap();
    assert_eq!(decoded, bundle);
    assert_eq!(decoded["objects"][0]["type"], "identity");
    assert!(!double.token_leaked_to_download());

    // A client that forwards the token to the download host is caught.
    let response = client
        .get(&url)
        .header("Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(status(&response), 200);
    assert!(double.token_leaked_to_download());
    assert_eq!(double.download_requests().len(), 2);
    assert_eq!(double.api_requests().len(), 6);

    // Only the exact issued URL works, and not once expired.
    let (unsigned, _) = url.split_once('?').unwrap();
    assert_eq!(status(&client.get(unsigned).send().await.unwrap()), 403);
    double.expire_downloads(true);
    assert_eq!(status(&client.get(&url).send().await.unwrap()), 403);
    double.expire_downloads(false);

    // Raw bytes are served as they are.
    double.set_download(b"not gzip".to_vec());
    let body = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"not gzip");
}

/// The default bundle has the identity first and every pattern type the connector reads;
/// with one host, downloads come from the API's own origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortiguard_default_bundle_covers_every_pattern_type_on_one_host() {
    let dir = tempfile::tempdir().unwrap();
    let knobs = fgd::Knobs {
        separate_download_host: false,
        ..fgd::Knobs::default()
    };
    let double = FortiGuard::start(dir.path(), knobs).await;
    let client = client(dir.path());
    let listing = client
        .get(double.feed_url("us,ca"))
        .header("Token", "fortiguard-token")
        .send()
        .await
        .unwrap();
    let listing = json_body(listing).await;
    let url = listing[0]["data"].as_str().unwrap();
    assert!(url.starts_with(&double.url()));
    let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
    let bundle: Value = serde_json::from_slice(&gunzip(&body)).unwrap();
    assert_eq!(bundle, fgd::sample_bundle());
    let objects = bundle["objects"].as_array().unwrap();
    assert_eq!(objects[0]["type"], "identity");
    let patterns: Vec<&str> = objects[1..]
        .iter()
        .map(|object| object["pattern"].as_str().unwrap())
        .collect();
    for kind in [
        "ipv4-addr:",
        "ipv6-addr:",
        "domain-name:",
        "url:",
        "network-traffic:src_ref",
    ] {
        assert!(patterns.iter().any(|p| p.contains(kind)), "{kind}");
    }
    assert_eq!(double.api_requests().len(), 1);
    assert_eq!(double.download_requests().len(), 1);
    assert_eq!(
        double.api_requests()[0].query("cc").as_deref(),
        Some("us,ca")
    );
}
