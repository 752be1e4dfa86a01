//! The admission guard for egress identities: a `ValidatingAdmissionPolicy` and its binding,
//! rendered from `firewall.egress_identities.admission`, that stop a namespace or pod from
//! claiming a Calico Enterprise egress gateway it was not given.
//!
//! Calico picks a workload's egress gateway from four annotations on its Namespace or Pod
//! ([`CLAIM_ANNOTATIONS`]). Whoever may edit those annotations may leave the cluster with
//! another team's source addresses, and so through the firewall rules written for that team.
//! The policy allows them only as the config lists them: each identity names the exact
//! annotations it stands for, the namespaces that may carry it, and the users and groups that
//! may assign it. This module owns the config section, its validation, and the rendering; it
//! does not talk to the API server (`threatflow admission render` prints the manifests and
//! `kubectl apply` installs them), and it does not learn which addresses an identity has.
//!
//! What the policy checks, on CREATE and UPDATE of namespaces and pods (their `status`
//! subresources and `namespaces/finalize` included, since those can rewrite annotations too),
//! outside the exempt namespaces, whenever the old or new object carries a claim annotation:
//!
//! - A Namespace whose claim annotations changed must end with none of them (giving up an
//!   identity is always allowed), or with exactly the annotations of an identity that lists
//!   the namespace and lists the requesting user or one of its groups.
//! - A Pod whose claim annotations changed must end with none, or with exactly its namespace's.
//!   Pods are created by controllers (a ReplicaSet's pods by the ReplicaSet controller), so
//!   `request.userInfo` on a pod names the controller, not the tenant; the namespace is where
//!   people are checked, and a pod may only repeat what its namespace says.
//! - A request that leaves the claim annotations as they were passes, whoever sends it: Calico
//!   writes annotations of its own (`gatewayMaintenance*`) on gateway pods, and a tenant may
//!   still edit the rest of its namespace.
//! - Dry-run requests are judged like real ones. DELETE and CONNECT are not matched: removing
//!   an object claims nothing.
//!
//! Limits, stated in the README too:
//! - Only changes are judged. Annotations set before the policy existed, or before the config
//!   stopped allowing them, stay until someone edits them.
//! - A pod's rejection shows only in its ReplicaSet's events, not to whoever applied the
//!   Deployment.
//! - Gateway hijack is not covered: a pod that carries a gateway's labels, in a namespace a
//!   gateway `namespaceSelector` matches, becomes a next hop for other tenants' traffic. Key
//!   those selectors on labels tenants cannot set (`projectcalico.org/name`,
//!   `kubernetes.io/metadata.name`) and control who may create pods in gateway namespaces.
//! - A pod that names an egress IP pool in `cni.projectcalico.org/ipv4pools` or asks for an
//!   address with `cni.projectcalico.org/ipAddrs` is not judged here.
//! - Cilium, Antrea and OVN-Kubernetes select by labels in cluster-scoped resources; those are
//!   guarded by RBAC on the resources and on the namespace labels their selectors read.
//! - `ValidatingAdmissionPolicy` is `admissionregistration.k8s.io/v1` from Kubernetes 1.30.
//!
//! The CEL uses only the standard language (`has`, `in`, `exists`, `filter`, `map`, `size`,
//! `string`, ternaries, `null`) and avoids mixed-type literals (Kubernetes type-checks
//! aggregate literals as homogeneous), so the same text runs on an API server and in the
//! tests' CEL interpreter. Every string taken from the config enters the CEL through
//! [`cel_string`], and nothing else is spliced into an expression.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::objects::{
    CALICO_MAX_NEXT_HOPS, CALICO_NAMESPACE_SELECTOR, CALICO_POLICY, CALICO_SELECTOR,
};
use crate::problems::{is_dns_label, is_dns_subdomain, Problems};

/// The annotations by which a Namespace or Pod picks its Calico Enterprise egress gateway, in
/// the order claims list them.
pub const CLAIM_ANNOTATIONS: [&str; 4] = [
    CALICO_SELECTOR,
    CALICO_NAMESPACE_SELECTOR,
    CALICO_POLICY,
    CALICO_MAX_NEXT_HOPS,
];

/// Who may claim which egress identity: rendered as a `ValidatingAdmissionPolicy` and its
/// binding by `threatflow admission render`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// The name of the ValidatingAdmissionPolicy and of its binding.
    #[serde(default = "default_name")]
    pub name: String,
    /// `deny` refuses a request that breaks the rules; `warn` lets it through with a warning
    /// to the client and an entry in the audit log (to try the policy out first).
    #[serde(default)]
    pub action: AdmissionAction,
    /// Namespaces the policy never checks (neither the Namespace itself nor its pods).
    #[serde(default = "default_exempt_namespaces")]
    pub exempt_namespaces: Vec<String>,
    /// The egress identities, each with the namespaces that may carry it and who may assign
    /// it. A namespace may appear in several.
    #[serde(default)]
    pub identities: Vec<IdentityConfig>,
}

/// What the binding does with a request that breaks the rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionAction {
    /// Refuse it (`validationActions: [Deny]`).
    #[default]
    Deny,
    /// Allow it, with a warning to the client and an audit annotation
    /// (`validationActions: [Warn, Audit]`).
    Warn,
}

/// One egress identity and who may claim it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The identity's name (a DNS label), used in denial messages.
    pub name: String,
    /// The namespaces that may carry this identity.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Exactly the Calico annotations this identity stands for, as they must appear on the
    /// Namespace: `egress.projectcalico.org/selector`, `…/namespaceSelector`,
    /// `…/egressGatewayPolicy` and `…/maxNextHops`; at least `selector` or
    /// `egressGatewayPolicy`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Users and service accounts (`system:serviceaccount:<namespace>:<name>`) allowed to
    /// set these annotations on the namespaces above.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups whose members are allowed to set them.
    #[serde(default)]
    pub groups: Vec<String>,
}

fn default_name() -> String {
    "threatflow-egress-identities".into()
}

fn default_exempt_namespaces() -> Vec<String> {
    vec!["kube-system".into()]
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            name: default_name(),
            action: AdmissionAction::default(),
            exempt_namespaces: default_exempt_namespaces(),
            identities: Vec::new(),
        }
    }
}

impl AdmissionConfig {
    /// Every problem of the section, each at its path under `path`.
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !is_dns_subdomain(&self.name) {
            problems.push(
                format!("{path}.name"),
                format!(
                    "`{}` must be a Kubernetes object name: lower-case letters, digits, `-` and `.`",
                    self.name
                ),
            );
        }
        for (i, namespace) in self.exempt_namespaces.iter().enumerate() {
            check_namespace(
                format!("{path}.exempt_namespaces[{i}]"),
                namespace,
                problems,
            );
        }
        if self.identities.is_empty() {
            problems.push(
                format!("{path}.identities"),
                "list at least one identity: without one the policy would refuse every egress annotation",
            );
        }
        let mut names = HashSet::new();
        for (i, identity) in self.identities.iter().enumerate() {
            identity.validate(&format!("{path}.identities[{i}]"), &mut names, problems);
        }
    }

    /// The `ValidatingAdmissionPolicy` that enforces the identities.
    pub fn policy(&self) -> ValidatingAdmissionPolicy {
        let claim_keys = cel_list(CLAIM_ANNOTATIONS);
        let namespace_selector = (!self.exempt_namespaces.is_empty()).then(|| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(self.exempt_namespaces.clone()),
            }]),
            match_labels: None,
        });
        // Long expressions are broken into lines (CEL treats a line break as a space) so that
        // the YAML shows them as blocks, readable in `kubectl get -o yaml`.
        let variables = [
            ("claimKeys", claim_keys.clone()),
            (
                "annotations",
                "has(object.metadata.annotations) ? object.metadata.annotations : {}".into(),
            ),
            (
                "oldAnnotations",
                lines(&[
                    "oldObject != null && has(oldObject.metadata.annotations)",
                    "  ? oldObject.metadata.annotations : {}",
                ]),
            ),
            // A claim is the list of `key: value` for the claim keys present, in the order of
            // claimKeys: two claims are equal exactly when they have the same keys with the
            // same values (no key contains `:`).
            ("claim", claim_of("variables.annotations")),
            ("oldClaim", claim_of("variables.oldAnnotations")),
            (
                "namespaceClaim",
                lines(&[
                    "namespaceObject != null && has(namespaceObject.metadata.annotations)",
                    &format!("  ? {}", claim_of("namespaceObject.metadata.annotations")),
                    "  : []",
                ]),
            ),
            ("identities", self.identity_table()),
            // The identities this namespace may carry with the claim it now has.
            (
                "candidates",
                lines(&[
                    "variables.identities.filter(id,",
                    "  variables.identities[id].claim == variables.claim &&",
                    "  object.metadata.name in variables.identities[id].namespaces)",
                ]),
            ),
            (
                "username",
                r#"has(request.userInfo.username) ? request.userInfo.username : """#.into(),
            ),
            (
                "groups",
                "has(request.userInfo.groups) ? request.userInfo.groups : []".into(),
            ),
            (
                "assignable",
                lines(&[
                    "variables.candidates.exists(id,",
                    "  variables.username in variables.identities[id].users ||",
                    "  variables.identities[id].groups.exists(g, g in variables.groups))",
                ]),
            ),
        ];
        // A request that leaves the claim as it was passes, whoever sends it.
        let unchanged = "variables.claim == variables.oldClaim ||";
        let validations = vec![
            Validation {
                expression: lines(&[
                    r#"request.resource.resource != "namespaces" ||"#,
                    unchanged,
                    "size(variables.claim) == 0 ||",
                    "size(variables.candidates) > 0",
                ]),
                message: Some(
                    "a namespace's egress.projectcalico.org annotations must be exactly those of \
                     an egress identity listed for it"
                        .into(),
                ),
                message_expression: Some(lines(&[
                    r#""namespace " + object.metadata.name +"#,
                    r#"" may not carry these egress.projectcalico.org annotations: " +"#,
                    r#""set exactly those of an egress identity listed for it, or remove them all""#,
                ])),
                reason: Some("Forbidden".into()),
            },
            Validation {
                expression: lines(&[
                    r#"request.resource.resource != "namespaces" ||"#,
                    unchanged,
                    "size(variables.candidates) == 0 ||",
                    "variables.assignable",
                ]),
                message: Some(
                    "the requester may not assign this egress identity to this namespace".into(),
                ),
                message_expression: Some(lines(&[
                    r#"variables.username + " may not give namespace " + object.metadata.name + " " +"#,
                    "(size(variables.candidates) == 1",
                    r#"  ? "the egress identity " + variables.candidates[0]"#,
                    r#"  : "any of the " + string(size(variables.candidates)) +"#,
                    r#"    " egress identities with these annotations") +"#,
                    r#"": ask a user or group allowed to assign it""#,
                ])),
                reason: Some("Forbidden".into()),
            },
            Validation {
                expression: lines(&[
                    r#"request.resource.resource != "pods" ||"#,
                    unchanged,
                    "size(variables.claim) == 0 ||",
                    "variables.claim == variables.namespaceClaim",
                ]),
                message: Some(
                    "a pod may not select a different egress gateway than its namespace".into(),
                ),
                message_expression: Some(lines(&[
                    r#""pod " + object.metadata.name +"#,
                    r#"": a pod may not select a different egress gateway than its namespace " +"#,
                    r#"request.namespace + "; remove its egress.projectcalico.org annotations, " +"#,
                    r#""or copy the namespace's exactly""#,
                ])),
                reason: Some("Forbidden".into()),
            },
        ];
        ValidatingAdmissionPolicy {
            metadata: self.metadata(),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(MatchResources {
                    namespace_selector,
                    resource_rules: Some(vec![NamedRuleWithOperations {
                        api_groups: Some(vec![String::new()]),
                        api_versions: Some(vec!["v1".into()]),
                        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                        resources: Some(
                            [
                                "namespaces",
                                "namespaces/status",
                                "namespaces/finalize",
                                "pods",
                                "pods/status",
                            ]
                            .map(String::from)
                            .to_vec(),
                        ),
                        ..NamedRuleWithOperations::default()
                    }]),
                    ..MatchResources::default()
                }),
                // Requests whose old and new objects carry no claim annotation are not
                // evaluated at all: with `failurePolicy: Fail`, this keeps the policy off the
                // path of every other namespace and pod.
                match_conditions: Some(vec![MatchCondition {
                    name: "carries-egress-claim".into(),
                    expression: lines(&[
                        &format!("{claim_keys}.exists(k,"),
                        "  (has(object.metadata.annotations) && k in object.metadata.annotations) ||",
                        "  (oldObject != null && has(oldObject.metadata.annotations) &&",
                        "    k in oldObject.metadata.annotations))",
                    ]),
                }]),
                variables: Some(
                    variables
                        .into_iter()
                        .map(|(name, expression)| Variable {
                            name: name.into(),
                            expression,
                        })
                        .collect(),
                ),
                validations: Some(validations),
                ..ValidatingAdmissionPolicySpec::default()
            }),
            status: None,
        }
    }

    /// The binding that applies the policy everywhere it matches, with the configured action.
    pub fn binding(&self) -> ValidatingAdmissionPolicyBinding {
        let actions: &[&str] = match self.action {
            AdmissionAction::Deny => &["Deny"],
            AdmissionAction::Warn => &["Warn", "Audit"],
        };
        ValidatingAdmissionPolicyBinding {
            metadata: self.metadata(),
            spec: Some(ValidatingAdmissionPolicyBindingSpec {
                policy_name: Some(self.name.clone()),
                validation_actions: Some(actions.iter().map(|&action| action.into()).collect()),
                ..ValidatingAdmissionPolicyBindingSpec::default()
            }),
        }
    }

    /// The policy and its binding as YAML documents, each introduced by `---`.
    pub fn to_yaml(&self) -> String {
        let policy = yaml_serde::to_string(&self.policy()).expect("a policy serializes");
        let binding = yaml_serde::to_string(&self.binding()).expect("a binding serializes");
        format!("---\n{policy}---\n{binding}")
    }

    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".into(), "threatflow".into()),
                (
                    "app.kubernetes.io/component".into(),
                    "egress-admission".into(),
                ),
            ])),
            ..ObjectMeta::default()
        }
    }

    /// The identities as a CEL map literal: name -> {claim, namespaces, users, groups}, every
    /// value a list of strings (Kubernetes refuses literals whose values differ in type).
    fn identity_table(&self) -> String {
        let entries: Vec<String> = self
            .identities
            .iter()
            .map(|identity| {
                let claim = CLAIM_ANNOTATIONS.iter().filter_map(|key| {
                    identity
                        .annotations
                        .get(*key)
                        .map(|value| format!("{key}: {value}"))
                });
                format!(
                    "  {}: {{\n    \"claim\": {},\n    \"namespaces\": {},\n    \"users\": {},\n    \"groups\": {}\n  }}",
                    cel_string(&identity.name),
                    cel_list(claim),
                    cel_list(&identity.namespaces),
                    cel_list(&identity.users),
                    cel_list(&identity.groups),
                )
            })
            .collect();
        format!("{{\n{}\n}}", entries.join(",\n"))
    }
}

impl IdentityConfig {
    fn validate<'a>(&'a self, at: &str, names: &mut HashSet<&'a str>, problems: &mut Problems) {
        if !is_dns_label(&self.name, 63) {
            problems.push(
                format!("{at}.name"),
                format!(
                    "`{}` must be a DNS label: 1 to 63 lower-case letters, digits and `-`",
                    self.name
                ),
            );
        } else if !names.insert(&self.name) {
            problems.push(
                format!("{at}.name"),
                format!("`{}` is used twice", self.name),
            );
        }
        if self.namespaces.is_empty() {
            problems.push(
                format!("{at}.namespaces"),
                "list the namespaces that may carry this identity",
            );
        }
        for (j, namespace) in self.namespaces.iter().enumerate() {
            check_namespace(format!("{at}.namespaces[{j}]"), namespace, problems);
        }
        let annotations_at = format!("{at}.annotations");
        for (key, value) in &self.annotations {
            if !CLAIM_ANNOTATIONS.contains(&key.as_str()) {
                problems.push(
                    &annotations_at,
                    format!(
                        "`{key}` is not one of Calico's egress annotations ({})",
                        CLAIM_ANNOTATIONS.join(", ")
                    ),
                );
            } else if value.trim().is_empty() {
                problems.push(&annotations_at, format!("`{key}` has an empty value"));
            } else if key == CALICO_MAX_NEXT_HOPS && value.parse::<u32>().is_err() {
                problems.push(
                    &annotations_at,
                    format!("`{key}` must be a whole number, not `{value}`"),
                );
            }
        }
        if !self.annotations.contains_key(CALICO_SELECTOR)
            && !self.annotations.contains_key(CALICO_POLICY)
        {
            problems.push(
                annotations_at,
                format!("set `{CALICO_SELECTOR}` or `{CALICO_POLICY}`: without one, Calico picks no gateway"),
            );
        }
        if self.users.is_empty() && self.groups.is_empty() {
            problems.push(
                format!("{at}.users"),
                "list the users or groups allowed to assign this identity",
            );
        }
        for (field, principals) in [("users", &self.users), ("groups", &self.groups)] {
            for (j, principal) in principals.iter().enumerate() {
                if principal.trim().is_empty() {
                    problems.push(format!("{at}.{field}[{j}]"), "is empty");
                }
            }
        }
    }
}

fn check_namespace(path: String, namespace: &str, problems: &mut Problems) {
    if !is_dns_label(namespace, 63) {
        problems.push(
            path,
            format!(
                "`{namespace}` is not a namespace name: 1 to 63 lower-case letters, digits and `-`"
            ),
        );
    }
}

/// CEL that maps an annotations map to its claim: `key: value` for each claim key present.
fn claim_of(annotations: &str) -> String {
    format!(
        r#"variables.claimKeys.filter(k, k in {annotations}).map(k, k + ": " + {annotations}[k])"#
    )
}

/// Lines of a CEL expression.
fn lines(lines: &[&str]) -> String {
    lines.join("\n")
}

/// `text` as a CEL string literal: in double quotes, with `\`, `"` and every character
/// outside printable ASCII escaped, so that no value can end the literal or span a line.
pub fn cel_string(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for c in text.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '"' => literal.push_str("\\\""),
            '\n' => literal.push_str("\\n"),
            '\r' => literal.push_str("\\r"),
            '\t' => literal.push_str("\\t"),
            ' '..='~' => literal.push(c),
            c if u32::from(c) <= 0xffff => {
                let _ = write!(literal, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(literal, "\\U{:08x}", u32::from(c));
            }
        }
    }
    literal.push('"');
    literal
}

/// Strings as a CEL list literal of [`cel_string`]s.
fn cel_list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<String> = items
        .into_iter()
        .map(|item| cel_string(item.as_ref()))
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
identities:
  - name: payments
    namespaces: [payments, payments-batch]
    annotations:
      egress.projectcalico.org/selector: "egress-code == 'payments'"
      egress.projectcalico.org/namespaceSelector: "projectcalico.org/name == 'egress-gateways'"
    users: ["system:serviceaccount:platform:gitops"]
    groups: [platform-admins]
"#;

    /// Parses `yaml` as the admission section and checks the problems found, as
    /// `(path, part of the message)` pairs in order.
    fn check(yaml: &str, expected: &[(&str, &str)]) {
        let config: AdmissionConfig = yaml_serde::from_str(yaml).expect("the section parses");
        let mut problems = Problems::default();
        config.validate("firewall.egress_identities.admission", &mut problems);
        let found: Vec<(String, String)> = problems
            .iter()
            .map(|problem| (problem.path.clone(), problem.message.clone()))
            .collect();
        assert_eq!(
            found.len(),
            expected.len(),
            "expected {expected:?}, found {found:?}"
        );
        for ((path, message), (expected_path, expected_message)) in found.iter().zip(expected) {
            assert_eq!(path, expected_path, "{found:?}");
            assert!(
                message.contains(expected_message),
                "{path}: `{message}` does not mention `{expected_message}`"
            );
        }
    }

    #[test]
    fn a_complete_section_is_valid_and_takes_the_documented_defaults() {
        check(VALID, &[]);
        let config: AdmissionConfig = yaml_serde::from_str(VALID).unwrap();
        let defaults = AdmissionConfig::default();
        assert_eq!(config.name, defaults.name);
        assert_eq!(config.name, "threatflow-egress-identities");
        assert_eq!(config.action, AdmissionAction::Deny);
        assert_eq!(config.exempt_namespaces, ["kube-system"]);
    }

    #[test]
    fn an_empty_section_needs_identities() {
        check(
            "{}",
            &[(
                "firewall.egress_identities.admission.identities",
                "at least one identity",
            )],
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        check(
            r#"
name: Not_A_Name
exempt_namespaces: [kube-system, "Bad Namespace"]
identities:
  - name: payments
    namespaces: [payments]
    annotations: {egress.projectcalico.org/selector: "a == 'b'"}
    users: [alice]
  - name: payments
    namespaces: []
    annotations:
      egress.projectcalico.org/namespaceSelector: "all()"
      egress.projectcalico.org/maxNextHops: "two"
      projectcalico.org/other: "x"
  - name: Shop
    namespaces: [shop, "-shop"]
    annotations:
      egress.projectcalico.org/egressGatewayPolicy: ""
    users: [""]
    groups: [devs]
"#,
            &[
                (
                    "firewall.egress_identities.admission.name",
                    "Kubernetes object name",
                ),
                (
                    "firewall.egress_identities.admission.exempt_namespaces[1]",
                    "not a namespace name",
                ),
                (
                    "firewall.egress_identities.admission.identities[1].name",
                    "`payments` is used twice",
                ),
                (
                    "firewall.egress_identities.admission.identities[1].namespaces",
                    "list the namespaces",
                ),
                (
                    "firewall.egress_identities.admission.identities[1].annotations",
                    "`egress.projectcalico.org/maxNextHops` must be a whole number",
                ),
                (
                    "firewall.egress_identities.admission.identities[1].annotations",
                    "`projectcalico.org/other` is not one of Calico's egress annotations",
                ),
                (
                    "firewall.egress_identities.admission.identities[1].annotations",
                    "set `egress.projectcalico.org/selector` or",
                ),
                (
                    "firewall.egress_identities.admission.identities[1].users",
                    "users or groups",
                ),
                (
                    "firewall.egress_identities.admission.identities[2].name",
                    "must be a DNS label",
                ),
                (
                    "firewall.egress_identities.admission.identities[2].namespaces[1]",
                    "`-shop` is not a namespace name",
                ),
                (
                    "firewall.egress_identities.admission.identities[2].annotations",
                    "has an empty value",
                ),
                (
                    "firewall.egress_identities.admission.identities[2].users[0]",
                    "empty",
                ),
            ],
        );
    }

    #[test]
    fn one_namespace_may_be_listed_by_several_identities() {
        check(
            r#"
identities:
  - name: payments
    namespaces: [shared]
    annotations: {egress.projectcalico.org/selector: "egress-code == 'payments'"}
    groups: [platform-admins]
  - name: batch
    namespaces: [shared]
    annotations: {egress.projectcalico.org/egressGatewayPolicy: batch}
    users: [alice]
"#,
            &[],
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = yaml_serde::from_str::<AdmissionConfig>("identities: []\nmode: deny\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `mode`"), "{error}");
        let error = yaml_serde::from_str::<AdmissionConfig>("action: block\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `block`"), "{error}");
    }

    #[test]
    fn cel_strings_escape_double_quotes_backslashes_and_everything_unprintable() {
        for (text, literal) in [
            ("plain", r#""plain""#),
            ("a == 'b'", r#""a == 'b'""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"C:\dir", r#""C:\\dir""#),
            ("a\nb\r\tc", r#""a\nb\r\tc""#),
            ("\u{0}\u{7f}", r#""\u0000\u007f""#),
            ("jürgen \u{2028}", r#""j\u00fcrgen \u2028""#),
            ("😀", r#""\U0001f600""#),
        ] {
            assert_eq!(cel_string(text), literal, "{text:?}");
        }
    }

    #[test]
    fn the_binding_follows_the_action() {
        let mut config: AdmissionConfig = yaml_serde::from_str(VALID).unwrap();
        let actions = |config: &AdmissionConfig| config.binding().spec.unwrap().validation_actions;
        assert_eq!(actions(&config), Some(vec!["Deny".to_owned()]));
        config.action = AdmissionAction::Warn;
        assert_eq!(
            actions(&config),
            Some(vec!["Warn".to_owned(), "Audit".to_owned()])
        );
        assert_eq!(
            config.binding().spec.unwrap().policy_name.as_deref(),
            Some("threatflow-egress-identities")
        );
    }

    #[test]
    fn without_exempt_namespaces_there_is_no_namespace_selector() {
        let mut config: AdmissionConfig = yaml_serde::from_str(VALID).unwrap();
        config.exempt_namespaces.clear();
        let constraints = config.policy().spec.unwrap().match_constraints.unwrap();
        assert_eq!(constraints.namespace_selector, None);
    }
}
