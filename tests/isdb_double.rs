//! The FortiGate double's Internet Service Database (ISDB) endpoints against a plain HTTPS
//! client: the catalogue, the summary and paging of `internet-service-details`, the version
//! profiles, and the refusals a client has to handle, so tests of the real ISDB client can
//! trust the double.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use common::fortigate::{self as fgt, Fault};

const DETAILS: &str = "/api/v2/monitor/firewall/internet-service-details";
const BASIC: &str = "/api/v2/monitor/firewall/internet-service-basic";
const NAMES: &str = "/api/v2/cmdb/firewall/internet-service-name";
const SERVICES: &str = "/api/v2/cmdb/firewall/internet-service";
const BOTNET: u64 = 3080383;
const VERSIONS: [&str; 5] = ["v6.4.15", "v7.0.17", "v7.2.11", "v7.4.8", "v7.6.3"];

/// A reply as an ISDB client sees it.
struct Got {
    status: u16,
    retry_after: Option<String>,
    /// `Null` when the body is not JSON.
    body: Value,
}

struct Device {
    double: fgt::FortiGate,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Device {
    async fn start(knobs: fgt::Knobs) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let double = fgt::FortiGate::start(dir.path(), knobs).await;
        let client = common::http::client_trusting(dir.path());
        Device {
            double,
            client,
            _dir: dir,
        }
    }

    async fn at(version: &str) -> Device {
        Device::start(fgt::Knobs {
            version: version.into(),
            ..fgt::Knobs::default()
        })
        .await
    }

    /// GETs `path_and_query` with `key` as the Bearer key (none when `None`).
    async fn get_with(&self, path_and_query: &str, key: Option<&str>) -> Got {
        let mut request = self
            .client
            .get(format!("{}{path_and_query}", self.double.url()));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        Got {
            status,
            retry_after,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path_and_query: &str) -> Got {
        self.get_with(path_and_query, Some("fgt-key")).await
    }

    async fn summary(&self, id: u64, extra: &str) -> u64 {
        let got = self
            .get(&format!("{DETAILS}?id={id}&summary_only=true{extra}"))
            .await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.body["results"]["id"], json!(id));
        got.body["results"]["total"].as_u64().unwrap()
    }

    async fn page(&self, id: u64, query: &str) -> Vec<Value> {
        let got = self.get(&format!("{DETAILS}?id={id}{query}")).await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.body["results"]["id"], json!(id));
        got.body["results"]["entry"].as_array().unwrap().clone()
    }

    /// Every row of a service, walked as the reference says a client should (summary, then
    /// pages of `count` until `start` passes `total` or a page is empty).
    async fn walk(&self, id: u64, count: usize) -> Vec<Value> {
        let total = self.summary(id, "").await as usize;
        let mut rows = Vec::new();
        while rows.len() < total {
            let page = self
                .page(id, &format!("&start={}&count={count}", rows.len()))
                .await;
            if page.is_empty() {
                break;
            }
            rows.extend(page);
        }
        rows
    }
}

fn range(row: &Value) -> (String, String) {
    let text = |field: &str| row["ip_range"][field].as_str().unwrap().to_owned();
    (text("start_ip"), text("end_ip"))
}

fn ranges(rows: &[Value]) -> BTreeSet<(String, String)> {
    rows.iter().map(range).collect()
}

fn owned(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(start, end)| (start.to_string(), end.to_string()))
        .collect()
}

/// The keys of an object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_table_holds_fortiguards_threat_entries_on_every_version() {
    let device = Device::at(VERSIONS[0]).await;
    for version in VERSIONS {
        device.double.set_version(version);
        let got = device.get(&format!("{NAMES}?vdom=root")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body["http_method"], "GET");
        assert_eq!(got.body["status"], "success");
        assert_eq!(got.body["vdom"], "root");
        assert_eq!(got.body["path"], "firewall");
        assert_eq!(got.body["name"], "internet-service-name");
        assert_eq!(got.body["serial"], "FGVM02TM00000000");
        assert_eq!(got.body["version"], version);
        assert_eq!(got.body["build"], 2829);
        let rows = got.body["results"].as_array().unwrap();
        let by_name: BTreeMap<&str, u64> = rows
            .iter()
            .map(|row| {
                assert_eq!(row["type"], "default");
                assert_eq!(
                    (&row["country-id"], &row["region-id"], &row["city-id"]),
                    (&json!(0), &json!(0), &json!(0))
                );
                (
                    row["name"].as_str().unwrap(),
                    row["internet-service-id"].as_u64().unwrap(),
                )
            })
            .collect();
        for (name, id) in [
            ("Tor-Relay.Node", 2818238),
            ("Tor-Exit.Node", 2818243),
            ("Proxy-Proxy.Server", 3014850),
            ("Botnet-C&C.Server", 3080383),
            ("Spam-Spamming.Server", 3145920),
            ("Phishing-Phishing.Server", 3211457),
            ("Shodan-Scanner", 9961638),
            ("Censys-Scanner", 10027174),
            ("Stretchoid-Scanner", 10879142),
            ("Google-Other", 65536),
            ("Microsoft-Azure", 327786),
            // Assumed (owner 44, offset 190); no public dump shows the real ID.
            ("Malicious-Malicious.Server", 2883774),
        ] {
            assert_eq!(by_name.get(name), Some(&id), "{name} on {version}");
        }
        assert_eq!(by_name.len(), 12);
    }
    assert_eq!(fgt::MALICIOUS_SERVER_ID, 2883774);

    // A filter finds one name (`&` percent-encoded), and an mkey reads one object.
    let got = device
        .get(&format!("{NAMES}?filter=name==Botnet-C%26C.Server"))
        .await;
    assert_eq!(got.body["results"].as_array().unwrap().len(), 1);
    assert_eq!(got.body["results"][0]["internet-service-id"], 3080383);
    let got = device.get(&format!("{NAMES}/Tor-Exit.Node")).await;
    assert_eq!(got.body["results"][0]["internet-service-id"], 2818243);
    let got = device.get(&format!("{NAMES}/No-Such.Entry")).await;
    assert_eq!(got.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vdoms_are_honoured_and_the_star_gives_one_envelope_per_vdom() {
    let device = Device::start(fgt::Knobs {
        vdoms: vec!["root".into(), "dmz".into()],
        ..fgt::Knobs::default()
    })
    .await;
    let got = device
        .get(&format!("{DETAILS}?id={BOTNET}&summary_only=true&vdom=dmz"))
        .await;
    assert_eq!(got.body["vdom"], "dmz");
    assert_eq!(got.body["results"], json!({"id": BOTNET, "total": 8}));
    let got = device.get(&format!("{NAMES}?vdom=dmz")).await;
    assert_eq!(got.body["vdom"], "dmz");

    for path in [
        format!("{DETAILS}?id={BOTNET}&summary_only=true&vdom=lab"),
        format!("{BASIC}?vdom=lab"),
        format!("{NAMES}?vdom=lab"),
        format!("{SERVICES}?vdom=lab"),
    ] {
        let got = device.get(&path).await;
        assert_eq!(got.status, 403, "{path}");
        assert_eq!(got.body["status"], "error", "{path}");
        assert_eq!(got.body["http_status"], 403, "{path}");
    }

    for path in [
        format!("{DETAILS}?id={BOTNET}&summary_only=true&vdom=*"),
        format!("{NAMES}?vdom=*"),
    ] {
        let got = device.get(&path).await;
        let envelopes = got.body.as_array().unwrap();
        let vdoms: Vec<&Value> = envelopes.iter().map(|envelope| &envelope["vdom"]).collect();
        assert_eq!(vdoms, [&json!("root"), &json!("dmz")], "{path}");
        assert_eq!(envelopes[0]["results"], envelopes[1]["results"], "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_table_counts_ipv4_and_adds_ipv6_ranges_from_7_2() {
    let device = Device::at("v7.0.17").await;
    let botnet = |body: &Value| {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["id"] == json!(BOTNET))
            .unwrap()
            .clone()
    };
    let got = device.get(SERVICES).await;
    assert_eq!(got.body["name"], "internet-service");
    assert_eq!(
        botnet(&got.body),
        json!({"id": BOTNET, "q_origin_key": BOTNET, "name": "Botnet-C&C.Server",
               "icon-id": 47, "direction": "dst", "database": "isdb",
               "ip-range-number": 3, "extra-ip-range-number": 0, "ip-number": 18,
               "singularity": 0, "obsolete": 0})
    );
    device.double.set_version("v7.2.11");
    let row = botnet(&device.get(SERVICES).await.body);
    assert_eq!(row["ip6-range-number"], 1);
    assert_eq!(row["extra-ip6-range-number"], 0);
    assert_eq!(row["ip-range-number"], 3);
    let got = device.get(&format!("{SERVICES}/{BOTNET}")).await;
    assert_eq!(got.body["results"][0]["name"], "Botnet-C&C.Server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internet_service_basic_appears_with_7_2() {
    let device = Device::at("v6.4.15").await;
    assert_eq!(device.get(BASIC).await.status, 404);
    device.double.set_version("v7.0.17");
    assert_eq!(device.get(BASIC).await.status, 404);
    for version in ["v7.2.11", "v7.4.8", "v7.6.3"] {
        device.double.set_version(version);
        let got = device.get(BASIC).await;
        assert_eq!(got.status, 200);
        assert_eq!(
            keys(&got.body),
            [
                "build",
                "http_method",
                "name",
                "path",
                "results",
                "serial",
                "status",
                "vdom",
                "version"
            ]
        );
        assert_eq!(got.body["name"], "internet-service-basic");
        assert_eq!(got.body["version"], version);
        let rows = got.body["results"].as_array().unwrap();
        assert_eq!(rows.len(), 12);
        let tor_exit = rows.iter().find(|row| row["id"] == 2818243).unwrap();
        assert_eq!(
            tor_exit,
            &json!({"id": 2818243, "name": "Tor-Exit.Node", "database": "isdb",
                    "direction": "src", "ip-number": 5, "ip-range-number": 2})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_then_pages_give_every_row_once() {
    let device = Device::at("v7.0.17").await;
    let page = device
        .page(BOTNET, "&start=0&count=20")
        .await
        .into_iter()
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(
        page,
        [
            json!({"proto": 6, "port": 443,
                   "ip_range": {"start_ip": "192.0.2.1", "end_ip": "192.0.2.1"},
                   "country": 0, "region": 0, "city": 0, "reputation": 1, "botnet": 10}),
            json!({"proto": 17, "port": 53,
                   "ip_range": {"start_ip": "192.0.2.1", "end_ip": "192.0.2.1"},
                   "country": 0, "region": 0, "city": 0, "reputation": 1, "botnet": 10}),
        ]
    );

    let listed: Vec<(String, String)> = (0..25)
        .map(|i| {
            (
                format!("198.51.100.{}", i * 8),
                format!("198.51.100.{}", i * 8 + i % 3),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = listed
        .iter()
        .map(|(start, end)| (start.as_str(), end.as_str()))
        .collect();
    device.double.set_isdb_service(BOTNET, pairs, 3);
    assert_eq!(device.summary(BOTNET, "").await, 75);
    let rows = device.walk(BOTNET, 20).await;
    assert_eq!(rows.len(), 75);
    let distinct: BTreeSet<(String, String, u64, u64)> = rows
        .iter()
        .map(|row| {
            let (start, end) = range(row);
            let proto = row["proto"].as_u64().unwrap();
            (start, end, proto, row["port"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(distinct.len(), 75, "no row twice");
    assert_eq!(ranges(&rows), listed.into_iter().collect());
    // Pages of 20, 20, 20 and 15; the walk ended on the total, not on an empty page.
    assert_eq!(device.double.isdb_page_reads(BOTNET), 4 + 1);
    assert!(device.page(BOTNET, "&start=75&count=20").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_is_clamped_to_20_through_1000_and_a_negative_start_is_zero() {
    let device = Device::at("v7.2.11").await;
    device.double.generate_isdb_service(BOTNET, 1500, 2);
    assert_eq!(device.summary(BOTNET, "").await, 3000);
    assert_eq!(device.page(BOTNET, "&count=5").await.len(), 20);
    assert_eq!(device.page(BOTNET, "&count=-3").await.len(), 20);
    assert_eq!(device.page(BOTNET, "&count=5000").await.len(), 1000);
    assert_eq!(device.page(BOTNET, "").await.len(), 1000);
    assert_eq!(device.page(BOTNET, "&count=500").await.len(), 500);
    let from_zero = device.page(BOTNET, "&start=0&count=20").await;
    assert_eq!(device.page(BOTNET, "&start=-7&count=20").await, from_zero);
    assert_eq!(
        range(&from_zero[0]),
        ("100.64.0.0".to_owned(), "100.64.0.0".to_owned())
    );
    assert_eq!(
        range(&from_zero[3]),
        ("100.64.0.4".to_owned(), "100.64.0.5".to_owned())
    );
    let tail = device.page(BOTNET, "&start=2990&count=20").await;
    assert_eq!(tail.len(), 10);
    assert_eq!(
        range(&tail[9]),
        ("100.64.23.108".to_owned(), "100.64.23.111".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_of_100k_rows_pages_through() {
    let device = Device::at("v7.4.8").await;
    device.double.generate_isdb_service(BOTNET, 50_000, 2);
    assert_eq!(device.summary(BOTNET, "").await, 100_000);
    let rows = device.walk(BOTNET, 1000).await;
    assert_eq!(rows.len(), 100_000);
    let expected: BTreeSet<(String, String)> = (0..50_000)
        .map(|index| {
            let (start, end) = fgt::generated_isdb_range(index);
            (start.to_string(), end.to_string())
        })
        .collect();
    assert_eq!(ranges(&rows), expected);
    assert_eq!(
        range(&rows[99_999]),
        ("100.67.13.60".to_owned(), "100.67.13.63".to_owned())
    );
    assert_eq!(device.double.isdb_page_reads(BOTNET), 100);
    let requests = device.double.requests_to(DETAILS);
    // Two summaries (the test's and the walk's), then 100 pages.
    assert_eq!(requests.len(), 102);
    assert_eq!(requests[1].query("summary_only").as_deref(), Some("true"));
    assert_eq!(requests[2].query("start").as_deref(), Some("0"));
    assert_eq!(requests[101].query("start").as_deref(), Some("99000"));
    assert_eq!(device.double.server.hits(DETAILS), 102);
    assert_eq!(device.double.isdb_ranges(BOTNET).len(), 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_can_change_during_a_walk() {
    let device = Device::at("v7.0.17").await;
    let listed: Vec<String> = (0..40).map(|i| format!("203.0.113.{i}")).collect();
    device.double.set_isdb_service(
        BOTNET,
        listed.iter().map(|ip| (ip.as_str(), ip.as_str())).collect(),
        1,
    );
    device.double.grow_isdb_after(
        BOTNET,
        1,
        vec![
            ("203.0.113.200", "203.0.113.200"),
            ("203.0.113.210", "203.0.113.219"),
        ],
    );
    assert_eq!(device.summary(BOTNET, "").await, 40);
    assert_eq!(device.page(BOTNET, "&start=0&count=20").await.len(), 20);
    // The database was updated after the first page.
    assert_eq!(device.summary(BOTNET, "").await, 42);
    assert_eq!(device.page(BOTNET, "&start=20&count=20").await.len(), 20);
    let past_old_end = device.page(BOTNET, "&start=40&count=20").await;
    assert_eq!(
        ranges(&past_old_end),
        owned(&[
            ("203.0.113.200", "203.0.113.200"),
            ("203.0.113.210", "203.0.113.219")
        ])
    );
    assert!(device.page(BOTNET, "&start=60&count=20").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mini_isdb_resolves_names_but_serves_no_rows() {
    let device = Device::at("v7.2.11").await;
    device.double.use_mini_isdb();
    let got = device
        .get(&format!("{NAMES}?filter=internet-service-id==3080383"))
        .await;
    assert_eq!(got.body["results"][0]["name"], "Botnet-C&C.Server");
    assert_eq!(device.summary(BOTNET, "").await, 0);
    assert!(device.page(BOTNET, "&start=0&count=1000").await.is_empty());
    let got = device.get(&format!("{SERVICES}/{BOTNET}")).await;
    assert_eq!(got.body["results"][0]["ip-range-number"], 0);
    assert_eq!(got.body["results"][0]["ip-number"], 0);

    // One service emptied by hand, the others untouched.
    let device = Device::at("v7.2.11").await;
    device.double.set_isdb_service(2818243, Vec::new(), 1);
    assert_eq!(device.summary(2818243, "").await, 0);
    assert_eq!(device.summary(BOTNET, "").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_gets_an_error_envelope() {
    let device = Device::at("v7.0.17").await;
    let got = device
        .get(&format!("{DETAILS}?id=1&summary_only=true"))
        .await;
    assert_eq!(got.status, 404);
    assert_eq!(
        got.body,
        json!({"http_method": "GET", "vdom": "root", "path": "firewall",
               "name": "internet-service-details", "status": "error", "http_status": 404,
               "error": -3, "serial": "FGVM02TM00000000", "version": "v7.0.17",
               "build": 2829})
    );
    device.double.remove_isdb_service(BOTNET);
    let got = device.get(&format!("{DETAILS}?id={BOTNET}&start=0")).await;
    assert_eq!(got.status, 404);
    let got = device.get(&format!("{DETAILS}?summary_only=true")).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.body["error"], -651);

    let device = Device::start(fgt::Knobs {
        isdb_unknown_id_status: 424,
        ..fgt::Knobs::default()
    })
    .await;
    let got = device.get(&format!("{DETAILS}?id=1")).await;
    assert_eq!((got.status, &got.body["http_status"]), (424, &json!(424)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_key_is_401_and_a_profile_without_firewall_read_403() {
    let device = Device::at("v7.4.8").await;
    let summary = format!("{DETAILS}?id={BOTNET}&summary_only=true");
    assert_eq!(device.get_with(&summary, None).await.status, 401);
    assert_eq!(device.get_with(&summary, Some("wrong")).await.status, 401);
    assert_eq!(device.get(&summary).await.status, 200);

    device.double.deny_firewall_read("fgt-key");
    for (path, name) in [
        (summary.as_str(), "internet-service-details"),
        (BASIC, "internet-service-basic"),
        (NAMES, "internet-service-name"),
        (SERVICES, "internet-service"),
    ] {
        let got = device.get(path).await;
        assert_eq!(got.status, 403, "{path}");
        assert_eq!(got.body["status"], "error", "{path}");
        assert_eq!(got.body["http_status"], 403, "{path}");
        assert_eq!(got.body["name"], name, "{path}");
        assert_eq!(got.body["version"], "v7.4.8", "{path}");
        assert!(got.body.get("results").is_none(), "{path}");
    }
    assert_eq!(device.double.isdb_page_reads(BOTNET), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_request_gets_429_with_retry_after() {
    let device = Device::at("v7.2.11").await;
    device.double.inject([Fault::Throttle {
        retry_after_secs: 3,
    }]);
    let got = device.get(&format!("{DETAILS}?id={BOTNET}&start=0")).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.retry_after.as_deref(), Some("3"));
    assert_eq!(device.double.isdb_page_reads(BOTNET), 0);
    assert_eq!(device.page(BOTNET, "&start=0").await.len(), 6);
    assert_eq!(device.double.requests_to(DETAILS).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_rows_and_ipv6_only_come_with_7_4() {
    let v4 = owned(&[
        ("192.0.2.1", "192.0.2.1"),
        ("198.51.100.0", "198.51.100.15"),
        ("203.0.113.7", "203.0.113.7"),
    ]);
    let v6 = owned(&[("2001:db8:bad::1", "2001:db8:bad::1")]);
    let device = Device::at("v7.2.11").await;
    for query in ["", "&ipv6_only=true"] {
        assert_eq!(device.summary(BOTNET, query).await, 6, "{query}");
        assert_eq!(ranges(&device.page(BOTNET, query).await), v4, "{query}");
    }
    for version in ["v7.4.8", "v7.6.3"] {
        device.double.set_version(version);
        assert_eq!(device.summary(BOTNET, "").await, 8);
        let both = device.page(BOTNET, "").await;
        assert_eq!(both.len(), 8);
        assert_eq!(ranges(&both), v4.union(&v6).cloned().collect());
        assert_eq!(device.summary(BOTNET, "&ipv6_only=true").await, 2);
        let only = device
            .page(BOTNET, "&ipv6_only=true&start=0&count=20")
            .await;
        assert_eq!(ranges(&only), v6);
        assert_eq!(
            only.iter()
                .map(|row| (
                    row["proto"].as_u64().unwrap(),
                    row["port"].as_u64().unwrap()
                ))
                .collect::<Vec<_>>(),
            [(6, 443), (17, 53)]
        );
        let got = device
            .get(&format!("{DETAILS}?id={BOTNET}&ipv6_only=true"))
            .await;
        assert_eq!(got.body["version"], version);
    }
}
