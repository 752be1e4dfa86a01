//! The Panorama double against a plain HTTPS client: the replies a Panorama client has to read
//! (`panorama-apis.md` §1–3), so tests of the real client can trust the double.

mod common;

use common::panorama::{self as pan, Panorama};

const ADDRESS: &str = "/address/entry[@name='web-1']";

struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    async fn start(dir: &std::path::Path) -> (Panorama, Api) {
        let double = Panorama::start(dir, pan::Knobs::default()).await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(dir.join("ca.pem")).unwrap(),
            )
            .unwrap()])
            .build()
            .unwrap();
        let url = format!("{}/api/", double.url());
        (double, Api { client, url })
    }

    /// POSTs `params` form-encoded, with `key` in `X-PAN-KEY` when given; the HTTP status must
    /// be 200 whatever the API says.
    async fn post(&self, key: Option<&str>, params: &[(&str, &str)]) -> String {
        let mut request = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(params));
        if let Some(key) = key {
            request = request.header("X-PAN-KEY", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// GETs with `params` in the query string.
    async fn get(&self, params: &[(&str, &str)]) -> String {
        let url = format!("{}?{}", self.url, form(params));
        let response = self.client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    async fn keygen(&self) -> String {
        let reply = self
            .post(
                None,
                &[
                    ("type", "keygen"),
                    ("user", "svc-threatflow"),
                    ("password", "pan-password"),
                ],
            )
            .await;
        text(&reply, "key").unwrap()
    }

    async fn config(&self, key: &str, action: &str, xpath: &str) -> String {
        self.post(
            Some(key),
            &[("type", "config"), ("action", action), ("xpath", xpath)],
        )
        .await
    }

    async fn op(&self, key: &str, cmd: &str) -> String {
        self.post(Some(key), &[("type", "op"), ("cmd", cmd)]).await
    }
}

fn form(params: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("https://form.invalid/").unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.query().unwrap_or_default().to_owned()
}

/// The text of the first `tag` element in a reply.
fn text(reply: &str, tag: &str) -> Option<String> {
    let document = roxmltree::Document::parse(reply).unwrap();
    let node = document.descendants().find(|node| node.has_tag_name(tag))?;
    Some(node.text().unwrap_or_default().to_owned())
}

/// The root `<response>`'s `status` and `code`.
fn status(reply: &str) -> (String, Option<String>) {
    let document = roxmltree::Document::parse(reply).unwrap();
    let root = document.root_element();
    (
        root.attribute("status").unwrap().to_owned(),
        root.attribute("code").map(str::to_owned),
    )
}

/// The text of a field of the `<job>` in a `show jobs id` reply.
fn job(reply: &str, tag: &str) -> String {
    let document = roxmltree::Document::parse(reply).unwrap();
    let job = document
        .descendants()
        .find(|node| node.has_tag_name("job"))
        .unwrap();
    child(job, tag).text().unwrap_or_default().to_owned()
}

/// The first child element of `node` named `tag`.
fn child<'a, 'input>(node: roxmltree::Node<'a, 'input>, tag: &str) -> roxmltree::Node<'a, 'input> {
    node.children()
        .find(|child| child.has_tag_name(tag))
        .unwrap_or_else(|| panic!("no <{tag}>"))
}

fn dg() -> String {
    pan::device_group("DG-K8S")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_keygen_and_work_in_header_param_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    // pango puts `type=keygen` in the URL and the credentials in the body.
    let response = api
        .client
        .post(format!("{}?type=keygen", api.url))
        .body(form(&[
            ("user", "svc-threatflow"),
            ("password", "pan-password"),
        ]))
        .send()
        .await
        .unwrap();
    let reply = response.text().await.unwrap();
    assert!(
        reply.starts_with("<response status = 'success'><result><key>"),
        "{reply}"
    );
    let key = text(&reply, "key").unwrap();
    let names = api
        .config(
            &key,
            "get",
            &format!("{}/device-group/entry/@name", pan::PANO),
        )
        .await;
    assert_eq!(
        names,
        r#"<response status="success" code="19"><result total-count="1" count="1"><entry name="DG-K8S"/></result></response>"#
    );
    let info = api
        .get(&[
            ("type", "op"),
            ("cmd", "<show><system><info/></system></show>"),
            ("key", &key),
        ])
        .await;
    assert_eq!(text(&info, "model").as_deref(), Some("Panorama"));
    assert_eq!(text(&info, "sw-version").as_deref(), Some("11.1.0"));
    let basic = api
        .client
        .get(format!(
            "{}?type=op&cmd=<check><pending-changes/></check>",
            api.url
        ))
        .basic_auth("svc-threatflow", Some("pan-password"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        basic,
        r#"<response status="success"><result>no</result></response>"#
    );
    let auths: Vec<&str> = double.requests().iter().map(|call| call.auth).collect();
    assert_eq!(auths, ["none", "header", "param", "basic"]);
    assert_eq!(double.calls(), 4);
    assert_eq!(double.requests()[1].action.as_deref(), Some("get"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_credentials_get_the_403_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    const FORBIDDEN: &str = "<response status = 'error' code = '403'><result><msg>Invalid Credential</msg></result></response>";
    let wrong = api
        .post(
            None,
            &[
                ("type", "keygen"),
                ("user", "svc-threatflow"),
                ("password", "guess"),
            ],
        )
        .await;
    assert_eq!(wrong, FORBIDDEN);
    assert_eq!(
        api.config("nonsense", "get", "/config/shared").await,
        FORBIDDEN
    );
    assert_eq!(
        api.post(None, &[("type", "op"), ("cmd", "<x/>")]).await,
        FORBIDDEN
    );
    let first = api.keygen().await;
    let second = api.keygen().await;
    assert_eq!(double.keygens(), 2);
    assert_eq!(
        api.config(&first, "get", "/config/shared").await,
        FORBIDDEN,
        "a keygen invalidates the earlier key"
    );
    assert_eq!(
        status(&api.config(&second, "get", "/config/shared").await).0,
        "success"
    );
    double.preset_key("from-a-secret");
    assert_eq!(
        status(&api.config("from-a-secret", "get", "/config/shared").await).0,
        "success"
    );
    double.set_password("rotated");
    assert_eq!(
        api.config(&second, "get", "/config/shared").await,
        FORBIDDEN
    );
    assert_eq!(
        api.config("from-a-secret", "get", "/config/shared").await,
        FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_nodes_are_code_7_on_get_and_no_such_node_on_show() {
    let dir = tempfile::tempdir().unwrap();
    let (_double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let missing = format!("{}{ADDRESS}", dg());
    assert_eq!(
        api.config(&key, "get", &missing).await,
        r#"<response status="success" code="7"><result/></response>"#
    );
    assert_eq!(
        api.config(&key, "show", &missing).await,
        r#"<response status="error"><msg><line>No such node</line></msg></response>"#
    );
    let rules = api
        .config(&key, "show", "/config/predefined/default-security-rules/rules/entry[@name='interzone-default']/action")
        .await;
    assert_eq!(
        rules,
        r#"<response status="success"><result><action>deny</action></result></response>"#
    );
    for bad in [
        "config/shared",
        "/config//shared",
        "/config/shared/entry[@uuid='x']",
        "/config/*",
    ] {
        assert_eq!(
            api.config(&key, "get", bad).await,
            r#"<response status="error" code="6"><msg><line>Bad Xpath</line></msg></response>"#,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_edit_is_in_the_candidate_until_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let xpath = format!("{}{ADDRESS}", dg());
    double.admin_edit(
        &xpath,
        "<entry name='web-1'><ip-netmask>10.1.2.3/32</ip-netmask></entry>",
    );
    let candidate = api.config(&key, "get", &xpath).await;
    let decorated = regex::Regex::new(
        r#"^<response status="success" code="19"><result total-count="1" count="1"><entry name="web-1" admin="admin" dirtyId="\d+" time="\d{4}/\d\d/\d\d \d\d:\d\d:\d\d"><ip-netmask>10\.1\.2\.3/32</ip-netmask></entry></result></response>$"#,
    )
    .unwrap();
    assert!(decorated.is_match(&candidate), "{candidate}");
    assert_eq!(status(&api.config(&key, "show", &xpath).await).0, "error");
    assert_eq!(double.running_xml(&xpath), None);
    let audit_cmd = "<show><config><audit><info></info></audit></config></show>";
    let before = api.op(&key, audit_cmd).await;
    let pending = api.op(&key, "<check><pending-changes/></check>").await;
    assert_eq!(text(&pending, "result").as_deref(), Some("yes"));

    assert!(double.admin_commit().is_some());
    assert_eq!(
        api.config(&key, "show", &xpath).await,
        r#"<response status="success"><result><entry name="web-1"><ip-netmask>10.1.2.3/32</ip-netmask></entry></result></response>"#
    );
    assert!(
        !api.config(&key, "get", &xpath).await.contains("dirtyId"),
        "a commit clears the marks"
    );
    let after = api
        .op(&key, "<show><config><audit><info/></audit></config></show>")
        .await;
    let newest = |reply: &str| {
        let document = roxmltree::Document::parse(reply).unwrap();
        let entries: Vec<(u64, String)> = document
            .descendants()
            .filter(|node| node.has_tag_name("entry"))
            .map(|entry| {
                let admin = entry.children().find(|child| child.has_tag_name("admin"));
                (
                    entry.attribute("name").unwrap().parse().unwrap(),
                    admin
                        .and_then(|admin| admin.text())
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        entries.into_iter().max().unwrap()
    };
    let (old, _) = newest(&before);
    let (new, admin) = newest(&after);
    assert!(new > old, "{before} then {after}");
    assert_eq!(admin, "admin");
    let pending = api.op(&key, "<check><pending-changes/></check>").await;
    assert_eq!(text(&pending, "result").as_deref(), Some("no"));
    assert_eq!(double.admin_commit(), None, "nothing left to commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_and_commit_give_a_job_that_polls_act_then_fin() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let commit = [("type", "commit"), ("cmd", "<commit></commit>")];
    assert_eq!(
        api.post(Some(&key), &commit).await,
        r#"<response status="success" code="19"><msg>There are no changes to commit.</msg></response>"#
    );
    let xpath = format!("{}{ADDRESS}", dg());
    let set = api
        .post(
            Some(&key),
            &[
                ("type", "config"),
                ("action", "set"),
                ("xpath", &xpath),
                (
                    "element",
                    "<ip-netmask>10.1.2.3/32</ip-netmask><description>a &amp; b</description>",
                ),
            ],
        )
        .await;
    assert_eq!(
        set,
        r#"<response status="success" code="20"><msg>command succeeded</msg></response>"#
    );
    assert!(api
        .config(&key, "get", &xpath)
        .await
        .contains(r#"admin="svc-threatflow""#));

    double.refuse_next_commit(pan::COMMIT_IN_PROGRESS);
    let busy = api.post(Some(&key), &commit).await;
    assert_eq!(status(&busy).0, "error");
    assert_eq!(
        text(&busy, "line").as_deref(),
        Some(pan::COMMIT_IN_PROGRESS)
    );

    let enqueued = api.post(Some(&key), &commit).await;
    let id = text(&enqueued, "job").unwrap();
    assert_eq!(
        enqueued,
        format!(
            r#"<response status="success" code="19"><result><msg><line>Commit job enqueued with jobid {id}</line></msg><job>{id}</job></result></response>"#
        )
    );
    let poll = format!("<show><jobs><id>{id}</id></jobs></show>");
    let first = api.op(&key, &poll).await;
    assert_eq!(job(&first, "status"), "ACT");
    assert_eq!(job(&first, "result"), "PEND");
    assert_eq!(job(&first, "type"), "Commit");
    assert!(job(&first, "progress").parse::<u32>().unwrap() < 100);
    assert_eq!(
        double.running_xml(&xpath),
        None,
        "the job has not finished yet"
    );
    let second = api.op(&key, &poll).await;
    assert_eq!(job(&second, "status"), "FIN");
    assert_eq!(job(&second, "result"), "OK");
    assert_eq!(job(&second, "progress"), "100");
    assert_eq!(
        double.running_xml(&xpath).unwrap(),
        r#"<entry name="web-1"><ip-netmask>10.1.2.3/32</ip-netmask><description>a &amp; b</description></entry>"#
    );

    // A push to the device group's firewall, then one that fails.
    let push = [
        ("type", "commit"),
        ("action", "all"),
        ("cmd", "<commit-all><shared-policy><device-group><entry name=\"DG-K8S\"/></device-group></shared-policy></commit-all>"),
    ];
    let enqueued = api.post(Some(&key), &push).await;
    let id = text(&enqueued, "job").unwrap();
    assert_eq!(
        text(&enqueued, "line").unwrap(),
        format!("Push job enqueued with jobid {id}")
    );
    let poll = format!("<show><jobs><id>{id}</id></jobs></show>");
    assert_eq!(job(&api.op(&key, &poll).await, "status"), "ACT");
    let done = api.op(&key, &poll).await;
    assert_eq!(job(&done, "type"), "CommitAll");
    assert_eq!(job(&done, "result"), "OK");
    assert_eq!(text(&done, "serial-no").as_deref(), Some("007051000050926"));

    double.fail_next_job("vsys1: rule 'x' references an unknown zone");
    let id = text(&api.post(Some(&key), &push).await, "job").unwrap();
    let poll = format!("<show><jobs><id>{id}</id></jobs></show>");
    api.op(&key, &poll).await;
    let failed = api.op(&key, &poll).await;
    let document = roxmltree::Document::parse(&failed).unwrap();
    let job_node = document
        .descendants()
        .find(|node| node.has_tag_name("job"))
        .unwrap();
    assert_eq!(child(job_node, "result").text(), Some("FAIL"));
    assert_eq!(
        child(child(job_node, "details"), "line").text(),
        Some("vsys1: rule 'x' references an unknown zone")
    );
    let device = child(child(job_node, "devices"), "entry");
    assert_eq!(child(device, "result").text(), Some("FAIL"));
    let errors = child(child(child(device, "details"), "msg"), "errors");
    assert_eq!(
        child(errors, "line").text(),
        Some("vsys1: rule 'x' references an unknown zone")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_honour_references_names_and_the_edit_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let address = format!("{}{ADDRESS}", dg());
    double.admin_set(&address, "<ip-netmask>10.1.2.3/32</ip-netmask>");
    double.admin_edit(
        &format!("{}/address-group/entry[@name='k8s-web']", dg()),
        "<entry name=\"k8s-web\"><static><member>web-1</member></static></entry>",
    );
    let refused = api.config(&key, "delete", &address).await;
    assert_eq!(
        status(&refused),
        ("error".into(), Some("10".into())),
        "{refused}"
    );
    assert!(double.candidate_xml(&address).is_some());

    let missing = format!("{}/address/entry[@name='gone']", dg());
    assert_eq!(
        api.config(&key, "delete", &missing).await,
        r#"<response status="success" code="7"><msg>Object doesn't exist</msg></response>"#
    );
    // A union is outside the subset; the group goes first, then the address may.
    let both = format!(
        "{0}/address-group/entry[@name='k8s-web'] | {0}/address/entry[@name='web-1']",
        dg()
    );
    assert_eq!(
        status(&api.config(&key, "delete", &both).await)
            .1
            .as_deref(),
        Some("6")
    );
    double.admin_delete(&format!("{}/address-group/entry[@name='k8s-web']", dg()));
    assert_eq!(
        status(&api.config(&key, "delete", &address).await)
            .1
            .as_deref(),
        Some("20")
    );

    let long = "a".repeat(64);
    let too_long = api
        .post(
            Some(&key),
            &[
                ("type", "config"),
                ("action", "set"),
                ("xpath", &format!("{}/address", dg())),
                (
                    "element",
                    &format!("<entry name=\"{long}\"><fqdn>example.com</fqdn></entry>"),
                ),
            ],
        )
        .await;
    assert_eq!(status(&too_long), ("error".into(), Some("12".into())));
    assert!(too_long.contains("<![CDATA["), "{too_long}");
    assert_eq!(
        double.candidate_xml(&format!("{}/address/entry", dg())),
        None,
        "nothing written"
    );

    let mismatched = api
        .post(
            Some(&key),
            &[
                ("type", "config"),
                ("action", "edit"),
                ("xpath", &address),
                (
                    "element",
                    "<entry name=\"web-2\"><fqdn>example.com</fqdn></entry>",
                ),
            ],
        )
        .await;
    assert_eq!(status(&mismatched).1.as_deref(), Some("12"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xpath_subset_selects_what_clients_emit() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let addresses = format!("{}/address", dg());
    double.admin_set(
        &addresses,
        "<entry name='a'><ip-netmask>10.0.0.1</ip-netmask></entry>\
         <entry name=\"o'neil\"><fqdn>example.com</fqdn></entry>\
         <entry name='c'><ip-netmask>10.0.0.3</ip-netmask></entry>",
    );
    double.admin_set(
        &format!("{}/address-group/entry[@name='g']", dg()),
        "<static><member>a</member></static>",
    );
    double.admin_set(
        &format!("{}/address-group/entry[@name='g']/static", dg()),
        "<member>c</member><member>a</member>",
    );
    assert_eq!(
        double
            .candidate_xml(&format!("{}/address-group", dg()))
            .unwrap(),
        r#"<address-group><entry name="g"><static><member>a</member><member>c</member></static></entry></address-group>"#,
        "set merges members without repeating one"
    );
    let two = api
        .config(
            &key,
            "get",
            &format!("{addresses}/entry[@name='a' or @name=\"c\"]/@name"),
        )
        .await;
    assert!(
        two.ends_with(r#"<result total-count="2" count="2"><entry name="a"/><entry name="c"/></result></response>"#),
        "{two}"
    );
    let quoted = api
        .config(
            &key,
            "get",
            &format!("{addresses}/entry[@name=concat('o', \"'\", 'neil')]"),
        )
        .await;
    assert!(
        quoted.contains(r#"<entry name="o'neil" admin="admin""#),
        "{quoted}"
    );
    let member = api
        .config(
            &key,
            "get",
            &format!(
                "{}/address-group/entry[@name='g']/static/member[text()='c']",
                dg()
            ),
        )
        .await;
    assert_eq!(status(&member).1.as_deref(), Some("19"), "{member}");
    // pango deletes several objects in one request.
    double.admin_delete(&format!("{}/address-group/entry[@name='g']", dg()));
    let deleted = api
        .config(
            &key,
            "delete",
            &format!("{addresses}/entry[@name='a' or @name='c']"),
        )
        .await;
    assert_eq!(status(&deleted).1.as_deref(), Some("20"), "{deleted}");
    assert_eq!(
        double
            .candidate_xml(&format!("{addresses}/entry/@name"))
            .unwrap(),
        r#"<entry name="o'neil"/>"#
    );
    let left = api
        .config(&key, "get", &format!("{addresses}/entry/@name"))
        .await;
    assert!(left.contains(r#"<entry name="o'neil"/>"#), "{left}");
    assert!(!left.contains(r#"name="a""#), "{left}");
}
