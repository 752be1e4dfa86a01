//! The Panorama double against a plain HTTPS client: the replies a Panorama client has to read
//! (`panorama-apis.md` §1–4), so tests of the real client can trust the double.

mod common;

use common::panorama::{self as pan, Panorama};

const ADDRESS: &str = "/address/entry[@name='web-1']";

struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    async fn start(dir: &std::path::Path) -> (Panorama, Api) {
        Api::start_with(dir, pan::Knobs::default()).await
    }

    async fn start_with(dir: &std::path::Path, knobs: pan::Knobs) -> (Panorama, Api) {
        let double = Panorama::start(dir, knobs).await;
        let client = common::http::client_trusting(dir);
        let url = format!("{}/api/", double.url());
        (double, Api { client, url })
    }

    /// POSTs `params` form-encoded, with `key` in `X-PAN-KEY` when given; the HTTP status must
    /// be 200 whatever the API says, but for bad credentials (403, with the API's envelope).
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
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status == 200 || (status == 403 && text.contains("code = '403'")),
            "{status}: {text}"
        );
        text
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

    /// A `type=user-id` request carrying a version 2.0 update with this payload, plus `extra`
    /// parameters (`target`, `vsys`).
    async fn uid(&self, key: &str, extra: &[(&str, &str)], payload: &str) -> String {
        let cmd = uid_message("2.0", payload);
        let mut params = vec![("type", "user-id"), ("cmd", cmd.as_str())];
        params.extend_from_slice(extra);
        self.post(Some(key), &params).await
    }

    /// `show object registered-ip` with these children, optionally relayed to `target`.
    async fn registered(&self, key: &str, target: Option<&str>, query: &str) -> String {
        let cmd = format!("<show><object><registered-ip>{query}</registered-ip></object></show>");
        let mut params = vec![("type", "op"), ("cmd", cmd.as_str())];
        params.extend(target.map(|serial| ("target", serial)));
        self.post(Some(key), &params).await
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

// --- User-ID (`panorama-apis.md` §4) ---------------------------------------------------------

const FIREWALL: &str = "007051000050926";
const CLEAN: &str = r#"<response status="success"><result><uid-response><version>2.0</version><payload><register/><unregister/></payload></uid-response></result></response>"#;

fn uid_message(version: &str, payload: &str) -> String {
    format!("<uid-message><version>{version}</version><type>update</type><payload>{payload}</payload></uid-message>")
}

/// `<entry ip=…><tag>members</tag></entry>`.
fn entry(ip: &str, members: &str) -> String {
    format!("<entry ip=\"{ip}\"><tag>{members}</tag></entry>")
}

/// The per-entry notes of a User-ID reply: (register|unregister, ip, message).
fn notes(reply: &str) -> Vec<(String, String, String)> {
    let document = roxmltree::Document::parse(reply).unwrap();
    document
        .descendants()
        .filter(|node| node.has_tag_name("entry"))
        .map(|entry| {
            (
                entry.parent().unwrap().tag_name().name().to_owned(),
                entry.attribute("ip").unwrap().to_owned(),
                entry.attribute("message").unwrap().to_owned(),
            )
        })
        .collect()
}

/// A `show object registered-ip` page: each IP with its tags, and `<count>`.
fn page(reply: &str) -> (Vec<(String, Vec<String>)>, usize) {
    assert_eq!(status(reply).0, "success", "{reply}");
    let document = roxmltree::Document::parse(reply).unwrap();
    let result = child(document.root_element(), "result");
    let entries = result
        .children()
        .filter(|node| node.has_tag_name("entry"))
        .map(|entry| {
            let tags = child(entry, "tag")
                .children()
                .filter_map(|member| member.text())
                .map(str::to_owned)
                .collect();
            (entry.attribute("ip").unwrap().to_owned(), tags)
        })
        .collect();
    let count = child(result, "count").text().unwrap().parse().unwrap();
    (entries, count)
}

fn ips(entries: &[(String, Vec<String>)]) -> Vec<&str> {
    entries.iter().map(|(ip, _)| ip.as_str()).collect()
}

fn set(items: &[&str]) -> std::collections::BTreeSet<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// Whether a remaining time is within a second below `seconds`.
fn about(left: Option<std::time::Duration>, seconds: u64) -> bool {
    left.is_some_and(|left| left.as_secs() <= seconds && left.as_secs() + 2 >= seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_read_back_page_by_page_in_ip_order() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    // pango sends version 1.0; this one comes in the query string.
    let payload = format!(
        "<register>{}{}{}</register>",
        entry(
            "10.0.0.10",
            "<member timeout=\"3600\">app.web</member><member>env.prod</member>"
        ),
        entry("2001:DB8::1", "<member timeout=\"0\">app.web</member>"),
        "<entry ip=\"10.0.0.2\" persistent=\"0\"><tag><member>app.db</member></tag></entry>",
    );
    let reply = api
        .get(&[
            ("type", "user-id"),
            ("key", &key),
            ("cmd", &uid_message("1.0", &payload)),
        ])
        .await;
    assert_eq!(reply, CLEAN);
    // curl -F key=… -F file=@msg.xml
    let boundary = "threatflow-boundary";
    let message = format!(
        "<uid-message><type>update</type><payload><register>{}{}</register></payload></uid-message>",
        entry("10.0.0.9", "<member>app.web</member>"),
        entry("192.168.1.1", "<member>app.web</member>"),
    );
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n{key}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"msg.xml\"\r\n\
         Content-Type: application/xml\r\n\r\n{message}\r\n--{boundary}--\r\n"
    );
    let multipart = api
        .client
        .post(format!("{}?type=user-id", api.url))
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(multipart, CLEAN);
    assert_eq!(double.uid_messages(), 2);
    assert_eq!(double.uid_entries(), 5);

    let table = double.registered(pan::PANORAMA_TABLE);
    assert_eq!(table["10.0.0.10"], set(&["app.web", "env.prod"]));
    assert_eq!(
        table["2001:db8::1"],
        set(&["app.web"]),
        "hosts are canonical"
    );
    assert!(about(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.0.0.10", "app.web"),
        3600
    ));
    assert_eq!(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.0.0.10", "env.prod"),
        None,
        "no timeout: never"
    );

    let first = api
        .registered(
            &key,
            None,
            "<all/><limit>2</limit><start-point>1</start-point>",
        )
        .await;
    assert_eq!(
        first,
        r#"<response status="success"><result><entry ip="10.0.0.2" from_agent="0" persistent="0"><tag><member>app.db</member></tag></entry><entry ip="10.0.0.9" from_agent="0" persistent="1"><tag><member>app.web</member></tag></entry><count>2</count></result></response>"#
    );
    // pango's paging: no selector, limit and start-point only; stop on a short page.
    let mut seen = Vec::new();
    loop {
        let reply = api
            .registered(
                &key,
                None,
                &format!(
                    "<limit>2</limit><start-point>{}</start-point>",
                    seen.len() + 1
                ),
            )
            .await;
        let (entries, count) = page(&reply);
        assert_eq!(count, entries.len());
        seen.extend(entries.iter().map(|(ip, _)| ip.clone()));
        if count < 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "10.0.0.2",
            "10.0.0.9",
            "10.0.0.10",
            "192.168.1.1",
            "2001:db8::1"
        ]
    );
    let (everything, count) = page(&api.registered(&key, None, "<all/>").await);
    assert_eq!((everything.len(), count), (5, 5));
    let (one, _) = page(&api.registered(&key, None, "<ip>10.0.0.10</ip>").await);
    assert_eq!(
        one,
        [(
            "10.0.0.10".to_owned(),
            vec!["app.web".to_owned(), "env.prod".to_owned()]
        )]
    );
    let tagged = api
        .registered(
            &key,
            None,
            "<tag><entry name=\"app.web\"/></tag><limit>500</limit>",
        )
        .await;
    assert_eq!(
        ips(&page(&tagged).0),
        ["10.0.0.9", "10.0.0.10", "192.168.1.1", "2001:db8::1"]
    );
    let past = api
        .registered(
            &key,
            None,
            "<all/><limit>2</limit><start-point>9</start-point>",
        )
        .await;
    assert_eq!(page(&past), (vec![], 0));
    let too_many = api.registered(&key, None, "<all/><limit>501</limit>").await;
    assert_eq!(status(&too_many), ("error".into(), Some("17".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_again_refreshes_the_timer_and_says_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let web = entry("10.1.0.1", "<member timeout=\"100\">app.web</member>");
    assert_eq!(
        api.uid(&key, &[], &format!("<register>{web}</register>"))
            .await,
        CLEAN
    );
    double.advance(std::time::Duration::from_secs(60));
    assert!(about(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.1.0.1", "app.web"),
        40
    ));
    let again = format!(
        "<register>{}{}</register>",
        entry(
            "10.1.0.1",
            "<member timeout=\"100\">app.web</member><member>env.prod</member>"
        ),
        entry("10.1.0.2", "<member>app.web</member>")
    );
    let reply = api.uid(&key, &[], &again).await;
    assert_eq!(
        reply,
        r#"<response status="error"><msg><line><uid-response><version>2.0</version><payload><register><entry ip="10.1.0.1" message="tag app.web already exists, ignore"/></register><unregister/></payload></uid-response></line></msg></response>"#
    );
    assert!(about(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.1.0.1", "app.web"),
        100
    ));
    let table = double.registered(pan::PANORAMA_TABLE);
    assert_eq!(
        table["10.1.0.1"],
        set(&["app.web", "env.prod"]),
        "the rest applied"
    );
    assert!(table.contains_key("10.1.0.2"));

    // The knob off: the note stays, the timer runs on.
    let other = tempfile::tempdir().unwrap();
    let knobs = pan::Knobs {
        refresh_on_reregister: false,
        ..pan::Knobs::default()
    };
    let (double, api) = Api::start_with(other.path(), knobs).await;
    let key = api.keygen().await;
    api.uid(&key, &[], &format!("<register>{web}</register>"))
        .await;
    double.advance(std::time::Duration::from_secs(60));
    let reply = api
        .uid(&key, &[], &format!("<register>{web}</register>"))
        .await;
    assert_eq!(notes(&reply).len(), 1, "{reply}");
    assert!(about(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.1.0.1", "app.web"),
        40
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_notes_missing_tags_and_empties_leave_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let payload = format!(
        "<register>{}{}</register>",
        entry("10.2.0.1", "<member>a</member><member>b</member>"),
        entry("10.2.0.2", "<member>a</member>")
    );
    assert_eq!(api.uid(&key, &[], &payload).await, CLEAN);
    let payload = format!(
        "<unregister>{}{}</unregister>",
        entry("10.2.0.1", "<member>a</member><member>zzz</member>"),
        entry("10.2.0.2", "<member>a</member>")
    );
    let reply = api.uid(&key, &[], &payload).await;
    assert_eq!(status(&reply).0, "error");
    assert_eq!(
        notes(&reply),
        [(
            "unregister".to_owned(),
            "10.2.0.1".to_owned(),
            "tag zzz does not exist, ignore unreg".to_owned()
        )]
    );
    let table = double.registered(pan::PANORAMA_TABLE);
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table["10.2.0.1"], set(&["b"]));
    let (gone, count) = page(&api.registered(&key, None, "<ip>10.2.0.2</ip>").await);
    assert_eq!((gone.len(), count), (0, 0));

    // No reference counting: another writer's mapping goes with our unregister.
    double.register_as_other(pan::PANORAMA_TABLE, "10.2.0.3", &["shared"]);
    let mine = entry("10.2.0.3", "<member>shared</member>");
    let reply = api
        .uid(&key, &[], &format!("<register>{mine}</register>"))
        .await;
    assert_eq!(notes(&reply)[0].2, "tag shared already exists, ignore");
    assert_eq!(
        api.uid(&key, &[], &format!("<unregister>{mine}</unregister>"))
            .await,
        CLEAN
    );
    assert!(!double
        .registered(pan::PANORAMA_TABLE)
        .contains_key("10.2.0.3"));
    assert_eq!(double.uid_entries(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_33rd_tag_and_bad_tags_are_refused_while_the_batch_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let many: String = (0..33)
        .map(|index| format!("<member>t{index:02}</member>"))
        .collect();
    let payload = format!(
        "<register>{}{}</register><login><entry name=\"corp\\alice\" ip=\"10.3.0.9\" timeout=\"20\"/></login>",
        entry("10.3.0.1", &many),
        entry(
            "10.3.0.2",
            &format!(
                "<member>ok</member><member>it's</member><member timeout=\"2592001\">late</member><member timeout=\"2592000\">month</member><member>{}</member>",
                "x".repeat(128)
            )
        ),
    );
    let reply = api.uid(&key, &[], &payload).await;
    assert_eq!(status(&reply).0, "error", "{reply}");
    let noted: Vec<(String, String)> = notes(&reply)
        .into_iter()
        .map(|(section, ip, message)| {
            assert_eq!(section, "register");
            (ip, message)
        })
        .collect();
    assert_eq!(noted.len(), 4, "{noted:?}");
    assert!(
        noted[0].0 == "10.3.0.1" && noted[0].1.contains("t32"),
        "{noted:?}"
    );
    assert!(noted[1..].iter().all(|(ip, _)| ip == "10.3.0.2"));
    assert!(noted[1].1.contains("it's"));
    assert!(noted[2].1.contains("late"));
    let table = double.registered(pan::PANORAMA_TABLE);
    assert_eq!(table["10.3.0.1"].len(), 32);
    assert!(!table["10.3.0.1"].contains("t32"));
    assert_eq!(table["10.3.0.2"], set(&["month", "ok"]));
    assert!(about(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.3.0.2", "month"),
        2_592_000
    ));
    assert!(
        !table.contains_key("10.3.0.9"),
        "logins are not registrations"
    );

    // A message the double cannot read changes nothing.
    let bad_version = api
        .post(
            Some(&key),
            &[
                ("type", "user-id"),
                (
                    "cmd",
                    &uid_message(
                        "3.0",
                        &format!(
                            "<register>{}</register>",
                            entry("10.3.0.5", "<member>a</member>")
                        ),
                    ),
                ),
            ],
        )
        .await;
    assert_eq!(status(&bad_version), ("error".into(), None));
    assert!(!double
        .registered(pan::PANORAMA_TABLE)
        .contains_key("10.3.0.5"));

    // Ranges and networks are kept as given; without the knob they are refused per entry.
    let ranges = format!(
        "<register>{}{}{}</register>",
        entry("10.4.0.0/24", "<member>net</member>"),
        entry("10.4.1.10-10.4.1.19", "<member>net</member>"),
        entry("10.4.1.300", "<member>net</member>"),
    );
    let reply = api.uid(&key, &[], &ranges).await;
    assert_eq!(notes(&reply).len(), 1, "{reply}");
    assert_eq!(notes(&reply)[0].1, "10.4.1.300");
    let table = double.registered(pan::PANORAMA_TABLE);
    assert!(table.contains_key("10.4.0.0/24") && table.contains_key("10.4.1.10-10.4.1.19"));
    let other = tempfile::tempdir().unwrap();
    let knobs = pan::Knobs {
        ranges: false,
        ..pan::Knobs::default()
    };
    let (double, api) = Api::start_with(other.path(), knobs).await;
    let key = api.keygen().await;
    assert_eq!(notes(&api.uid(&key, &[], &ranges).await).len(), 3);
    assert!(double.registered(pan::PANORAMA_TABLE).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_expire_when_the_clock_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let payload = format!(
        "<register>{}{}</register>",
        entry(
            "10.5.0.1",
            "<member timeout=\"30\">short</member><member timeout=\"0\">forever</member>"
        ),
        entry("10.5.0.2", "<member timeout=\"30\">short</member>"),
    );
    assert_eq!(api.uid(&key, &[], &payload).await, CLEAN);
    double.advance(std::time::Duration::from_secs(29));
    assert_eq!(page(&api.registered(&key, None, "<all/>").await).1, 2);
    double.advance(std::time::Duration::from_secs(2));
    let (entries, count) = page(&api.registered(&key, None, "<all/>").await);
    assert_eq!(count, 1);
    assert_eq!(
        entries,
        [("10.5.0.1".to_owned(), vec!["forever".to_owned()])]
    );
    assert_eq!(
        double.tag_expiry(pan::PANORAMA_TABLE, "10.5.0.1", "short"),
        None
    );
    // An expired tag can be registered anew without a note.
    let again = entry("10.5.0.2", "<member timeout=\"30\">short</member>");
    assert_eq!(
        api.uid(&key, &[], &format!("<register>{again}</register>"))
            .await,
        CLEAN
    );
}

fn two_firewalls() -> pan::Knobs {
    pan::Knobs {
        device_groups: [
            ("DG-A".to_owned(), vec!["0001A".to_owned()]),
            ("DG-B".to_owned(), vec!["0001B".to_owned()]),
        ]
        .into(),
        ..pan::Knobs::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_keep_firewall_tables_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start_with(dir.path(), two_firewalls()).await;
    let key = api.keygen().await;
    let register = |ip: &str| format!("<register>{}</register>", entry(ip, "<member>a</member>"));
    assert_eq!(
        api.uid(
            &key,
            &[("target", "0001A"), ("vsys", "vsys1")],
            &register("10.6.0.1")
        )
        .await,
        CLEAN
    );
    assert_eq!(
        api.uid(&key, &[("target", "0001B")], &register("10.6.0.2"))
            .await,
        CLEAN
    );
    assert_eq!(api.uid(&key, &[], &register("10.6.0.3")).await, CLEAN);
    assert_eq!(
        double.registered("0001A").keys().collect::<Vec<_>>(),
        ["10.6.0.1"]
    );
    assert_eq!(
        double.registered("0001B").keys().collect::<Vec<_>>(),
        ["10.6.0.2"]
    );
    assert_eq!(
        double
            .registered(pan::PANORAMA_TABLE)
            .keys()
            .collect::<Vec<_>>(),
        ["10.6.0.3"]
    );
    let read = |target| api.registered(&key, target, "<all/>");
    assert_eq!(ips(&page(&read(Some("0001A")).await).0), ["10.6.0.1"]);
    assert_eq!(ips(&page(&read(None).await).0), ["10.6.0.3"]);

    const NOT_CONNECTED: &str =
        r#"<response status="error"><msg><line>0009Z not connected</line></msg></response>"#;
    assert_eq!(
        api.uid(&key, &[("target", "0009Z")], &register("10.6.0.4"))
            .await,
        NOT_CONNECTED
    );
    assert_eq!(read(Some("0009Z")).await, NOT_CONNECTED);
    assert!(double.registered("0009Z").is_empty());
    let logged = double.requests();
    assert_eq!(logged[1].target.as_deref(), Some("0001A"));
    assert_eq!(logged[1].vsys.as_deref(), Some("vsys1"));
    assert_eq!(double.uid_messages(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_membership_on_a_firewall_follows_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start_with(dir.path(), two_firewalls()).await;
    let key = api.keygen().await;
    let dg_a = pan::device_group("DG-A");
    double.admin_set(
        &format!("{dg_a}/address-group"),
        "<entry name=\"dag-web\"><dynamic><filter>'app.web' and ('env.prod' OR \"env.stage\")</filter></dynamic></entry>",
    );
    double.admin_set(
        &format!("{dg_a}/address"),
        "<entry name=\"H-10.7.9.9\"><ip-netmask>10.7.9.9</ip-netmask><tag><member>app.web</member><member>env.prod</member></tag></entry>",
    );
    double.admin_set(
        "/config/shared/address-group",
        "<entry name=\"dag-any\"><dynamic><filter>k8s or app.web</filter></dynamic></entry>",
    );
    double.admin_commit().unwrap();
    // Only the running config counts.
    double.admin_set(
        &format!("{dg_a}/address-group"),
        "<entry name=\"dag-draft\"><dynamic><filter>'app.web'</filter></dynamic></entry>",
    );
    let payload = format!(
        "<register>{}{}{}</register>",
        entry(
            "10.7.0.10",
            "<member>app.web</member><member>env.prod</member>"
        ),
        entry(
            "10.7.0.2",
            "<member>app.web</member><member>env.stage</member>"
        ),
        entry("10.7.0.3", "<member>app.web</member>"),
    );
    assert_eq!(api.uid(&key, &[("target", "0001A")], &payload).await, CLEAN);
    assert_eq!(api.uid(&key, &[("target", "0001B")], &payload).await, CLEAN);
    assert_eq!(
        double.dag_members("0001A", "dag-web"),
        ["10.7.0.2", "10.7.0.10", "H-10.7.9.9"]
    );
    let show = |target: Option<&'static str>, what: &'static str| {
        let cmd = format!(
            "<show><object><dynamic-address-group>{what}</dynamic-address-group></object></show>"
        );
        let api = &api;
        let key = key.clone();
        async move {
            let mut params = vec![("type", "op"), ("cmd", cmd.as_str()), ("vsys", "vsys1")];
            params.extend(target.map(|serial| ("target", serial)));
            api.post(Some(&key), &params).await
        }
    };
    assert_eq!(
        show(Some("0001A"), "<name>dag-web</name>").await,
        r#"<response status="success"><result><dyn-addr-grp><entry><vsys>vsys1</vsys><group-name>dag-web</group-name><filter>'app.web' and ('env.prod' OR "env.stage")</filter><member-list><entry name="10.7.0.2" type="registered-ip"/><entry name="10.7.0.10" type="registered-ip"/><entry name="H-10.7.9.9" type="address-object"/></member-list></entry></dyn-addr-grp></result></response>"#
    );
    let unregister = entry("10.7.0.10", "<member>env.prod</member>");
    assert_eq!(
        api.uid(
            &key,
            &[("target", "0001A")],
            &format!("<unregister>{unregister}</unregister>")
        )
        .await,
        CLEAN
    );
    assert_eq!(
        double.dag_members("0001A", "dag-web"),
        ["10.7.0.2", "H-10.7.9.9"]
    );
    // `all`: the device group's groups, then shared ones (without `<vsys>`).
    let all = show(Some("0001A"), "<all></all>").await;
    let document = roxmltree::Document::parse(&all).unwrap();
    let groups: Vec<(Option<&str>, &str, usize)> = document
        .descendants()
        .filter(|node| node.has_tag_name("group-name"))
        .map(|name| {
            let group = name.parent().unwrap();
            let vsys = group
                .children()
                .find(|node| node.has_tag_name("vsys"))
                .and_then(|vsys| vsys.text());
            let members = child(group, "member-list").children().count();
            (vsys, name.text().unwrap(), members)
        })
        .collect();
    assert_eq!(
        groups,
        [(Some("vsys1"), "dag-web", 2), (None, "dag-any", 3)],
        "{all}"
    );
    // DG-B's firewall has no dag-web; its shared group sees only its own table.
    assert_eq!(double.dag_members("0001B", "dag-web"), Vec::<String>::new());
    assert_eq!(
        double.dag_members("0001B", "dag-any"),
        ["10.7.0.2", "10.7.0.3", "10.7.0.10"]
    );
    // Panorama itself does not populate DAGs.
    assert_eq!(
        show(None, "<name>dag-web</name>").await,
        r#"<response status="success"><result><device-groups><entry name="DG-A"><address-group name="dag-web"><filter>'app.web' and ('env.prod' OR "env.stage")</filter><member-list/></address-group></entry></device-groups></result></response>"#
    );
    let panorama_all = show(None, "<all/>").await;
    assert!(
        panorama_all.contains(r#"<entry name="shared"><address-group name="dag-any">"#),
        "{panorama_all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_only_the_targeted_table() {
    let dir = tempfile::tempdir().unwrap();
    let (double, api) = Api::start(dir.path()).await;
    let key = api.keygen().await;
    let payload = format!(
        "<register>{}{}</register>",
        entry("10.8.0.1", "<member>a</member><member>b</member>"),
        entry("10.8.0.2", "<member>a</member>"),
    );
    let target = [("target", FIREWALL)];
    assert_eq!(api.uid(&key, &target, &payload).await, CLEAN);
    assert_eq!(api.uid(&key, &[], &payload).await, CLEAN);
    let by_tag = "<clear><registered-ip><tag><member>a</member></tag></registered-ip></clear>";
    assert_eq!(api.uid(&key, &target, by_tag).await, CLEAN);
    assert_eq!(
        double.registered(FIREWALL),
        [("10.8.0.1".to_owned(), set(&["b"]))].into()
    );
    let all = "<clear><registered-ip><all/></registered-ip></clear>";
    assert_eq!(api.uid(&key, &target, all).await, CLEAN);
    assert!(double.registered(FIREWALL).is_empty());
    assert_eq!(
        page(&api.registered(&key, Some(FIREWALL), "<all/>").await).1,
        0
    );
    assert_eq!(double.registered(pan::PANORAMA_TABLE).len(), 2);
    assert_eq!(api.uid(&key, &[], all).await, CLEAN);
    assert!(double.registered(pan::PANORAMA_TABLE).is_empty());
}
