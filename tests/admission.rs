//! The admission guard for egress identities, evaluated for real: the policy that
//! `threatflow admission render` prints is applied, with a CEL interpreter, to AdmissionReview
//! requests shaped exactly as the API server sends them (tests/fixtures/admission), the way
//! the API server applies a ValidatingAdmissionPolicy: match constraints, match conditions,
//! variables, validations, then the binding's actions. The manifests also validate against
//! the Kubernetes schemas offline.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use cel::{Context, Env, Value as Cel};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use threatflow::config::Config;
use threatflow::egress::admission::{AdmissionAction, AdmissionConfig, IdentityConfig};

const FIXTURES: &str = "tests/fixtures/admission";

fn fixture_path(name: &str) -> PathBuf {
    common::root().join(FIXTURES).join(name)
}

fn fixture(name: &str) -> Json {
    let text = std::fs::read_to_string(fixture_path(name)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// The admission section of the test config, loaded the way every command loads a config.
fn test_config() -> AdmissionConfig {
    let config = Config::load_valid(&fixture_path("threatflow.yaml")).unwrap();
    config
        .firewall
        .and_then(|firewall| firewall.egress_identities)
        .and_then(|egress| egress.admission)
        .expect("the test config has an admission section")
}

// ---------------------------------------------------------------------------------------------
// A ValidatingAdmissionPolicy evaluator.

/// What the API server does with a request, given one policy and its binding.
#[derive(Clone, Debug, PartialEq)]
enum Verdict {
    /// The policy does not apply to the request.
    NotMatched,
    Allowed,
    /// Refused (`validationActions: [Deny]`), with each failed validation's message.
    Denied(Vec<String>),
    /// Let through with these warnings (`validationActions: [Warn, ...]`).
    Warned(Vec<String>),
    /// An expression could not be evaluated: with `failurePolicy: Fail` the request is
    /// refused. No test expects this, so it fails loudly with the error.
    Failed(String),
}

/// A policy and its binding as `kubectl apply` would create them, and the cluster's
/// namespaces (for `namespaceObject` and the namespace selector).
struct Admission {
    policy: Json,
    binding: Json,
    namespaces: HashMap<String, Json>,
    env: Arc<Env>,
}

impl Admission {
    /// Reads the two YAML documents `threatflow admission render` prints.
    fn from_yaml(yaml: &str) -> Admission {
        let documents: Vec<Json> = yaml_serde::Deserializer::from_str(yaml)
            .map(|document| Json::deserialize(document).unwrap())
            .collect();
        let [policy, binding]: [Json; 2] =
            documents.try_into().unwrap_or_else(|documents: Vec<Json>| {
                panic!("{} documents:\n{yaml}", documents.len())
            });
        assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
        assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
        assert_eq!(
            binding["spec"]["policyName"], policy["metadata"]["name"],
            "the binding names the policy"
        );
        let namespaces = fixture("namespaces.json")["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|namespace| {
                let name = namespace["metadata"]["name"].as_str().unwrap().to_owned();
                (name, namespace.clone())
            })
            .collect();
        Admission {
            policy,
            binding,
            namespaces,
            env: Arc::new(Env::stdlib()),
        }
    }

    fn review(&self, review: &Json) -> Verdict {
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let request = &review["request"];
        let spec = &self.policy["spec"];
        if !self.matches_constraints(&spec["matchConstraints"], request) {
            return Verdict::NotMatched;
        }
        let verdict = self.evaluate(spec, request);
        match verdict {
            Verdict::Failed(_) if spec["failurePolicy"] == "Ignore" => Verdict::Allowed,
            verdict => verdict,
        }
    }

    /// `matchConstraints`: the resource rules, then the namespace selector.
    fn matches_constraints(&self, constraints: &Json, request: &Json) -> bool {
        assert!(
            constraints.get("excludeResourceRules").is_none()
                && constraints.get("objectSelector").is_none(),
            "the evaluator does not implement {constraints}"
        );
        let rules = constraints["resourceRules"].as_array().unwrap();
        if !rules.iter().any(|rule| rule_matches(rule, request)) {
            return false;
        }
        let Some(selector) = constraints.get("namespaceSelector") else {
            return true;
        };
        // A Namespace is matched on its own labels; a namespaced object on its namespace's;
        // any other cluster-scoped object is not subject to the namespace selector.
        let labels = if request["resource"]["resource"] == "namespaces" {
            let object = if request["object"].is_null() {
                &request["oldObject"]
            } else {
                &request["object"]
            };
            object["metadata"]["labels"].clone()
        } else if let Some(namespace) = request["namespace"].as_str() {
            self.namespaces
                .get(namespace)
                .unwrap_or_else(|| panic!("no namespace {namespace} in namespaces.json"))
                ["metadata"]["labels"]
                .clone()
        } else {
            return true;
        };
        selector_matches(selector, &labels)
    }

    /// The variables Kubernetes binds for a request: `object`, `oldObject` (null on CREATE),
    /// `request` (without the objects), `namespaceObject` (null for cluster-scoped objects),
    /// `params` (null: the policy has no `paramKind`), and no `variables` yet.
    fn activation(&self, request: &Json) -> Context<'static, 'static> {
        let mut context = Context::with_env(Arc::clone(&self.env));
        context.add_variable_from_value("object", to_cel(&request["object"]));
        context.add_variable_from_value("oldObject", to_cel(&request["oldObject"]));
        let mut request_variable = request.clone();
        let fields = request_variable.as_object_mut().unwrap();
        fields.remove("object");
        fields.remove("oldObject");
        context.add_variable_from_value("request", to_cel(&request_variable));
        let namespace_object = match request["namespace"].as_str() {
            Some(namespace) if request["resource"]["resource"] != "namespaces" => {
                to_cel(&self.namespaces[namespace])
            }
            _ => Cel::Null,
        };
        context.add_variable_from_value("namespaceObject", namespace_object);
        context.add_variable_from_value("params", Cel::Null);
        context.add_variable_from_value("variables", HashMap::<String, Cel>::new());
        context
    }

    /// Evaluates the policy's `variables` in order, each seeing the ones before it as
    /// `variables.<name>`, and binds them all.
    fn bind_variables(&self, context: &mut Context) -> Result<HashMap<String, Cel>, String> {
        let mut variables = HashMap::new();
        for variable in self.policy["spec"]["variables"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variable["name"].as_str().unwrap();
            let value = self
                .eval(context, &variable["expression"])
                .map_err(|error| format!("variable {name}: {error}"))?;
            variables.insert(name.to_owned(), value);
            context.add_variable_from_value("variables", variables.clone());
        }
        Ok(variables)
    }

    /// `matchConditions`, `variables`, then each validation.
    fn evaluate(&self, spec: &Json, request: &Json) -> Verdict {
        let mut context = self.activation(request);
        for condition in spec["matchConditions"].as_array().into_iter().flatten() {
            match self.eval(&context, &condition["expression"]) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Verdict::NotMatched,
                other => {
                    return Verdict::Failed(format!(
                        "matchCondition {}: {other:?}",
                        condition["name"]
                    ))
                }
            }
        }
        if let Err(error) = self.bind_variables(&mut context) {
            return Verdict::Failed(error);
        }
        let mut messages = Vec::new();
        for validation in spec["validations"].as_array().unwrap() {
            match self.eval(&context, &validation["expression"]) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => messages.push(self.message(&context, validation)),
                other => {
                    return Verdict::Failed(format!(
                        "validation {}: {other:?}",
                        validation["expression"]
                    ))
                }
            }
        }
        let actions = &self.binding["spec"]["validationActions"];
        let has = |action: &str| {
            actions
                .as_array()
                .unwrap()
                .iter()
                .any(|candidate| candidate == action)
        };
        if messages.is_empty() {
            Verdict::Allowed
        } else if has("Deny") {
            Verdict::Denied(messages)
        } else if has("Warn") {
            Verdict::Warned(messages)
        } else {
            Verdict::Allowed
        }
    }

    /// A failed validation's message: its `messageExpression`, else its `message`, else the
    /// API server's default. A `messageExpression` that fails falls back to `message`, as on
    /// the API server, and the failure is appended so that a test notices.
    fn message(&self, context: &Context, validation: &Json) -> String {
        let fallback = validation["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("failed expression: {}", validation["expression"]));
        match validation.get("messageExpression") {
            None => fallback,
            Some(expression) => match self.eval(context, expression) {
                Ok(Cel::String(message)) => message.to_string(),
                other => format!("{fallback} (messageExpression failed: {other:?})"),
            },
        }
    }

    /// The value of one of the policy's variables for a request.
    fn variable(&self, review: &Json, name: &str) -> Cel {
        let mut context = self.activation(&review["request"]);
        let mut variables = self.bind_variables(&mut context).unwrap();
        variables
            .remove(name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    }

    fn eval(&self, context: &Context, expression: &Json) -> Result<Cel, String> {
        let text = expression.as_str().expect("an expression is a string");
        let program = self
            .env
            .compile(text)
            .map_err(|error| format!("`{text}` does not compile: {error}"))?;
        program
            .execute(context)
            .map_err(|error| format!("`{text}`: {error}"))
    }
}

/// A `NamedRuleWithOperations` against the request's operation, group, version, resource and
/// subresource (`*` is every resource but no subresource; `pods/*` every subresource of pods).
fn rule_matches(rule: &Json, request: &Json) -> bool {
    let listed = |field: &str, value: &Json| {
        rule[field]
            .as_array()
            .unwrap()
            .iter()
            .any(|item| item == "*" || item == value)
    };
    let resource = request["resource"]["resource"].as_str().unwrap();
    let subresource = request["subResource"].as_str().unwrap_or("");
    let resource_listed = rule["resources"].as_array().unwrap().iter().any(|item| {
        let item = item.as_str().unwrap();
        let (item_resource, item_subresource) = item.split_once('/').unwrap_or((item, ""));
        (item_resource == "*" || item_resource == resource)
            && (item_subresource == "*" || item_subresource == subresource)
    });
    listed("operations", &request["operation"])
        && listed("apiGroups", &request["resource"]["group"])
        && listed("apiVersions", &request["resource"]["version"])
        && resource_listed
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`) against labels.
fn selector_matches(selector: &Json, labels: &Json) -> bool {
    let label = |key: &str| labels.get(key).and_then(Json::as_str);
    let labels_match = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key) == value.as_str());
    let expressions_match = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|requirement| {
            let key = requirement["key"].as_str().unwrap();
            let values = requirement["values"].as_array();
            let listed =
                |value: &str| values.is_some_and(|values| values.iter().any(|v| v == value));
            match requirement["operator"].as_str().unwrap() {
                "In" => label(key).is_some_and(listed),
                "NotIn" => !label(key).is_some_and(listed),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        });
    labels_match && expressions_match
}

/// JSON as CEL sees a Kubernetes object: integers as `int`, objects as maps with string keys,
/// and an absent value or `null` as `null`.
fn to_cel(value: &Json) -> Cel {
    match value {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(number) => match number.as_i64() {
            Some(int) => Cel::Int(int),
            None => Cel::Float(number.as_f64().unwrap()),
        },
        Json::String(text) => Cel::from(text.clone()),
        Json::Array(items) => Cel::from(items.iter().map(to_cel).collect::<Vec<Cel>>()),
        Json::Object(fields) => Cel::from(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), to_cel(value)))
                .collect::<HashMap<String, Cel>>(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The verdicts.

fn denied(message: &str) -> Verdict {
    Verdict::Denied(vec![message.to_owned()])
}

const ALICE_MAY_NOT: &str = "alice@example.com may not give namespace payments-batch the egress \
                             identity payments: ask a user or group allowed to assign it";

#[test]
fn every_fixture_gets_the_verdict_the_api_server_would_give() {
    let admission = Admission::from_yaml(&test_config().to_yaml());
    let expected = [
        ("namespace-create-by-allowed-user.json", Verdict::Allowed),
        ("namespace-create-by-allowed-group.json", Verdict::Allowed),
        (
            "namespace-create-by-disallowed-user.json",
            denied(ALICE_MAY_NOT),
        ),
        (
            "namespace-create-dry-run-by-disallowed-user.json",
            denied(ALICE_MAY_NOT),
        ),
        (
            "namespace-update-to-another-namespaces-identity.json",
            denied(
                "namespace shop may not carry these egress.projectcalico.org annotations: set \
                 exactly those of an egress identity listed for it, or remove them all",
            ),
        ),
        (
            "namespace-update-partial-claim.json",
            denied(
                "namespace payments may not carry these egress.projectcalico.org annotations: \
                 set exactly those of an egress identity listed for it, or remove them all",
            ),
        ),
        ("namespace-update-removing-claim.json", Verdict::Allowed),
        ("namespace-update-leaving-claim.json", Verdict::Allowed),
        ("namespace-delete.json", Verdict::NotMatched),
        ("pod-create-as-namespace.json", Verdict::Allowed),
        (
            "pod-create-with-another-gateway.json",
            denied(
                "pod shop-checkout-5f8b7d9c4-q7m2p: a pod may not select a different egress \
                 gateway than its namespace shop; remove its egress.projectcalico.org \
                 annotations, or copy the namespace's exactly",
            ),
        ),
        ("pod-create-in-exempt-namespace.json", Verdict::NotMatched),
        ("pod-status-update-keeping-claim.json", Verdict::Allowed),
    ];
    let mut wrong = Vec::new();
    for (name, verdict) in &expected {
        let got = admission.review(&fixture(name));
        if &got != verdict {
            wrong.push(format!(
                "{name}:\n  expected {verdict:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Every request fixture is in the table.
    let mut reviews: Vec<String> = std::fs::read_dir(common::root().join(FIXTURES))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json") && name != "namespaces.json")
        .collect();
    reviews.sort();
    let mut listed: Vec<String> = expected.iter().map(|(name, _)| name.to_string()).collect();
    listed.sort();
    assert_eq!(reviews, listed);
}

#[test]
fn the_policy_does_not_evaluate_requests_that_carry_no_claim() {
    let admission = Admission::from_yaml(&test_config().to_yaml());
    // A namespace without egress annotations, created by anyone.
    let mut review = fixture("namespace-create-by-disallowed-user.json");
    let object = &mut review["request"]["object"]["metadata"];
    object["annotations"] = json!({"owner": "alice"});
    assert_eq!(admission.review(&review), Verdict::NotMatched);
    // The matchCondition is what keeps it out: the validations alone would also pass it.
    let mut without_conditions = Admission::from_yaml(&test_config().to_yaml());
    without_conditions.policy["spec"]
        .as_object_mut()
        .unwrap()
        .remove("matchConditions");
    assert_eq!(without_conditions.review(&review), Verdict::Allowed);
}

#[test]
fn a_dry_run_is_judged_like_the_real_request() {
    let admission = Admission::from_yaml(&test_config().to_yaml());
    let dry_run = fixture("namespace-create-dry-run-by-disallowed-user.json");
    assert_eq!(dry_run["request"]["dryRun"], true);
    let mut real = dry_run.clone();
    real["request"]["dryRun"] = json!(false);
    real["request"]["options"]
        .as_object_mut()
        .unwrap()
        .remove("dryRun");
    assert_eq!(admission.review(&dry_run), admission.review(&real));
    assert_eq!(admission.review(&dry_run), denied(ALICE_MAY_NOT));
}

#[test]
fn warn_lets_the_request_through_with_the_same_message() {
    let mut config = test_config();
    config.action = AdmissionAction::Warn;
    let admission = Admission::from_yaml(&config.to_yaml());
    assert_eq!(
        admission.binding["spec"]["validationActions"],
        json!(["Warn", "Audit"])
    );
    assert_eq!(
        admission.review(&fixture("namespace-create-by-disallowed-user.json")),
        Verdict::Warned(vec![ALICE_MAY_NOT.to_owned()])
    );
    assert_eq!(
        admission.review(&fixture("namespace-create-by-allowed-user.json")),
        Verdict::Allowed
    );
}

#[test]
fn an_identity_given_to_one_user_per_namespace_is_checked_per_namespace() {
    // The same gateway for two namespaces, each assignable by its own team.
    let config: AdmissionConfig = yaml_serde::from_str(
        r#"
identities:
  - name: payments
    namespaces: [payments]
    annotations: {egress.projectcalico.org/egressGatewayPolicy: shared-egress}
    groups: [payments-admins]
  - name: batch
    namespaces: [payments-batch]
    annotations: {egress.projectcalico.org/egressGatewayPolicy: shared-egress}
    groups: [developers]
"#,
    )
    .unwrap();
    let admission = Admission::from_yaml(&config.to_yaml());
    let mut review = fixture("namespace-create-by-disallowed-user.json");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"egress.projectcalico.org/egressGatewayPolicy": "shared-egress"});
    // Alice is in `developers`: she may give payments-batch the identity `batch`...
    assert_eq!(admission.review(&review), Verdict::Allowed);
    // ...but not payments the identity `payments`.
    review["request"]["name"] = json!("payments");
    review["request"]["namespace"] = json!("payments");
    let metadata = &mut review["request"]["object"]["metadata"];
    metadata["name"] = json!("payments");
    metadata["labels"]["kubernetes.io/metadata.name"] = json!("payments");
    assert_eq!(
        admission.review(&review),
        denied(
            "alice@example.com may not give namespace payments the egress identity payments: \
             ask a user or group allowed to assign it"
        )
    );
}

/// Values that would end a string literal, or the expression around it, if they were
/// spliced into the CEL unescaped.
const HOSTILE_SELECTOR: &str =
    "egress-code == 'a' \", \"egress.projectcalico.org/selector: b\") || true || (\" \\' \\\\ )\nall()";
const HOSTILE_GROUP: &str = "\"], \"groups\": [\"system:authenticated";

#[test]
fn hostile_config_values_stay_inside_their_string_literals() {
    let hostile_users = [
        "x\", \"mallory",
        "mallory') || true || ('",
        "eve\" || true || \"",
        "back\\slash\\",
        "new\nline",
        "tab\there \u{0}\u{2028}ünï",
    ];
    let config = AdmissionConfig {
        identities: vec![IdentityConfig {
            name: "payments".into(),
            namespaces: vec!["payments-batch".into()],
            annotations: [(
                "egress.projectcalico.org/selector".to_owned(),
                HOSTILE_SELECTOR.to_owned(),
            )]
            .into(),
            users: hostile_users.iter().map(|user| user.to_string()).collect(),
            groups: vec![HOSTILE_GROUP.into()],
        }],
        ..AdmissionConfig::default()
    };
    let mut problems = threatflow::problems::Problems::default();
    config.validate("admission", &mut problems);
    assert!(problems.is_empty(), "{problems}");
    let admission = Admission::from_yaml(&config.to_yaml());

    let review = |user: &str, groups: &[&str], selector: &str| {
        let mut review = fixture("namespace-create-by-disallowed-user.json");
        review["request"]["userInfo"]["username"] = json!(user);
        review["request"]["userInfo"]["groups"] = json!(groups);
        review["request"]["object"]["metadata"]["annotations"] =
            json!({"egress.projectcalico.org/selector": selector});
        review
    };
    // The identity table evaluates to exactly the configured strings.
    let table = admission.variable(&review("alice", &[], HOSTILE_SELECTOR), "identities");
    let expected = to_cel(&json!({
        "payments": {
            "claim": [format!("egress.projectcalico.org/selector: {HOSTILE_SELECTOR}")],
            "namespaces": ["payments-batch"],
            "users": hostile_users,
            "groups": [HOSTILE_GROUP],
        }
    }));
    assert_eq!(table, expected);

    // Someone not listed gets nothing from the payloads.
    let authenticated = ["system:authenticated"];
    assert!(matches!(
        admission.review(&review("alice", &authenticated, HOSTILE_SELECTOR)),
        Verdict::Denied(_)
    ));
    assert!(matches!(
        admission.review(&review("mallory", &authenticated, HOSTILE_SELECTOR)),
        Verdict::Denied(_)
    ));
    // Each listed user, spelled exactly, may assign exactly the configured value.
    for user in hostile_users {
        assert_eq!(
            admission.review(&review(user, &authenticated, HOSTILE_SELECTOR)),
            Verdict::Allowed,
            "{user:?}"
        );
        assert!(matches!(
            admission.review(&review(user, &authenticated, "egress-code == 'a'")),
            Verdict::Denied(_)
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The manifests themselves, and the command that prints them.

#[test]
fn the_policy_fails_closed_and_matches_what_it_guards() {
    let admission = Admission::from_yaml(&test_config().to_yaml());
    let spec = &admission.policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(
        spec["matchConstraints"]["resourceRules"],
        json!([{
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["namespaces", "namespaces/status", "namespaces/finalize", "pods", "pods/status"],
        }])
    );
    assert_eq!(
        spec["matchConstraints"]["namespaceSelector"],
        json!({"matchExpressions": [{
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "calico-system"],
        }]})
    );
    assert_eq!(
        admission.binding["spec"]["validationActions"],
        json!(["Deny"])
    );
    assert_eq!(
        admission.policy["metadata"]["name"],
        "threatflow-egress-identities"
    );
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admission.yaml");
    std::fs::write(&path, test_config().to_yaml()).unwrap();
    common::kubernetes_schemas::assert_valid("threatflow admission render", &path);
}

fn threatflow(args: &[&str]) -> Output {
    Command::new(common::binary())
        .args(args)
        .current_dir(common::root())
        .output()
        .expect("the binary runs")
}

#[test]
fn the_command_prints_the_manifests_the_library_renders() {
    let output = threatflow(&[
        "admission",
        "render",
        "--config",
        &format!("{FIXTURES}/threatflow.yaml"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed, test_config().to_yaml());
    assert!(printed.starts_with("---\napiVersion: admissionregistration.k8s.io/v1\n"));
    // What it prints is what the evaluator judged above.
    let admission = Admission::from_yaml(&printed);
    assert_eq!(
        admission.review(&fixture("namespace-create-by-disallowed-user.json")),
        denied(ALICE_MAY_NOT)
    );
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("threatflow.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn the_command_names_the_section_a_config_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "firewall:\n  serve: {listen_addr: \"0.0.0.0:9444\"}\n  egress_identities:\n    mechanism: calico\n",
    );
    let output = threatflow(&["admission", "render", "--config", &path]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("has no `firewall.egress_identities.admission` section"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn the_command_reports_config_problems_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"
firewall:
  egress_identities:
    admission:
      identities:
        - name: payments
          annotations: {egress.projectcalico.org/selector: "egress-code == 'payments'"}
          users: [alice]
"#,
    );
    let output = threatflow(&["admission", "render", "--config", &path]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "firewall.egress_identities.admission.identities[0].namespaces: list the namespaces"
        ),
        "{stderr}"
    );
    let path = write_config(
        dir.path(),
        "firewall:\n  egress_identities:\n    admission:\n      identities: []\n      deny: true\n",
    );
    let output = threatflow(&["admission", "render", "--config", &path]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("firewall.egress_identities.admission.deny: unknown field `deny`"),
        "{stderr}"
    );
}
