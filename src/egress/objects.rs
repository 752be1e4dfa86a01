//! The egress mechanisms' objects, as far as egress identities need them, read from the
//! JSON the API serves. Each kind is one [`Resource`]; an object that does not parse is
//! reported with its name and why, and left out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::cluster::LabelSelector;

/// Calico Enterprise's claim annotations, on namespaces and pods: which gateway pods (or
/// which EgressGatewayPolicy) their traffic leaves through.
pub const CALICO_SELECTOR: &str = "egress.projectcalico.org/selector";
pub const CALICO_NAMESPACE_SELECTOR: &str = "egress.projectcalico.org/namespaceSelector";
pub const CALICO_POLICY: &str = "egress.projectcalico.org/egressGatewayPolicy";
pub const CALICO_MAX_NEXT_HOPS: &str = "egress.projectcalico.org/maxNextHops";
/// The AKS static gateway a pod opts into.
pub const AKS_GATEWAY: &str = "kubernetes.azure.com/static-gateway-configuration";

/// A kind of egress object threatflow reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    FelixConfiguration,
    IpPool,
    EgressGateway,
    EgressGatewayPolicy,
    CiliumPolicy,
    IsovalentPolicy,
    AntreaEgress,
    AntreaPool,
    OvnEgressIp,
    AksGateway,
}

impl Resource {
    /// (group, version, kind, plural, namespaced)
    pub fn api(self) -> (&'static str, &'static str, &'static str, &'static str, bool) {
        match self {
            Resource::FelixConfiguration => (
                "projectcalico.org",
                "v3",
                "FelixConfiguration",
                "felixconfigurations",
                false,
            ),
            Resource::IpPool => ("projectcalico.org", "v3", "IPPool", "ippools", false),
            Resource::EgressGateway => (
                "operator.tigera.io",
                "v1",
                "EgressGateway",
                "egressgateways",
                true,
            ),
            Resource::EgressGatewayPolicy => (
                "projectcalico.org",
                "v3",
                "EgressGatewayPolicy",
                "egressgatewaypolicies",
                false,
            ),
            Resource::CiliumPolicy => (
                "cilium.io",
                "v2",
                "CiliumEgressGatewayPolicy",
                "ciliumegressgatewaypolicies",
                false,
            ),
            Resource::IsovalentPolicy => (
                "isovalent.com",
                "v1",
                "IsovalentEgressGatewayPolicy",
                "isovalentegressgatewaypolicies",
                false,
            ),
            Resource::AntreaEgress => ("crd.antrea.io", "v1beta1", "Egress", "egresses", false),
            Resource::AntreaPool => (
                "crd.antrea.io",
                "v1beta1",
                "ExternalIPPool",
                "externalippools",
                false,
            ),
            Resource::OvnEgressIp => ("k8s.ovn.org", "v1", "EgressIP", "egressips", false),
            Resource::AksGateway => (
                "egressgateway.kubernetes.azure.com",
                "v1alpha1",
                "StaticGatewayConfiguration",
                "staticgatewayconfigurations",
                true,
            ),
        }
    }
}

/// A Kubernetes label selector in its structured form.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectorSpec {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<ExpressionSpec>,
}

#[derive(Clone, Debug, Deserialize)]
struct ExpressionSpec {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

impl SelectorSpec {
    /// The selector, through its string form so keys and values are checked the same way.
    /// Cilium's `k8s:` key prefix is dropped.
    pub fn selector(&self) -> Result<LabelSelector, String> {
        let key = |key: &str| key.strip_prefix("k8s:").unwrap_or(key).to_owned();
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{}={v}", key(k)))
            .collect();
        for expression in &self.match_expressions {
            let k = key(&expression.key);
            let values = expression.values.join(",");
            parts.push(match expression.operator.as_str() {
                "In" => format!("{k} in ({values})"),
                "NotIn" => format!("{k} notin ({values})"),
                "Exists" => k,
                "DoesNotExist" => format!("!{k}"),
                other => return Err(format!("unknown selector operator `{other}`")),
            });
        }
        LabelSelector::parse(&parts.join(",")).map_err(|error| error.to_string())
    }
}

fn metadata_name(value: &Value) -> (String, String) {
    let metadata = &value["metadata"];
    (
        metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        metadata["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A Calico IP pool.
#[derive(Clone, Debug)]
pub struct IpPool {
    pub name: String,
    pub cidr: IpNet,
    pub nat_outgoing: bool,
}

/// A Calico Enterprise EgressGateway: its pods' labels and the pools and Elastic IPs they use.
#[derive(Clone, Debug)]
pub struct EgressGateway {
    pub namespace: String,
    pub name: String,
    pub pod_labels: BTreeMap<String, String>,
    /// Pool names or CIDRs.
    pub pools: Vec<String>,
    pub elastic_ips: Vec<IpAddr>,
}

/// One rule of an EgressGatewayPolicy.
#[derive(Clone, Debug)]
pub struct GatewayRule {
    pub destination: Option<IpNet>,
    /// `None`: the destination is routed normally, not through a gateway.
    pub gateway: Option<(String, Option<String>)>,
}

/// A Cilium (or Isovalent) egress gateway policy.
#[derive(Clone, Debug)]
pub struct CiliumPolicy {
    pub name: String,
    /// (namespace selector, pod selector) pairs, ORed.
    pub selectors: Vec<(Option<LabelSelector>, Option<LabelSelector>)>,
    pub gateways: Vec<CiliumGateway>,
    /// Isovalent's status: the active gateways' egress IPs.
    pub active_ips: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
pub struct CiliumGateway {
    pub node_selector: LabelSelector,
    pub interface: Option<String>,
    pub egress_ip: Option<IpAddr>,
}

/// An Antrea Egress.
#[derive(Clone, Debug)]
pub struct AntreaEgress {
    pub name: String,
    pub namespaces: Option<LabelSelector>,
    pub pods: Option<LabelSelector>,
    pub ip: Option<IpAddr>,
    pub pool: Option<String>,
}

/// An OVN-Kubernetes EgressIP.
#[derive(Clone, Debug)]
pub struct OvnEgressIp {
    pub name: String,
    pub namespaces: LabelSelector,
    pub pods: Option<LabelSelector>,
    pub ips: Vec<IpAddr>,
}

/// Everything read from the API about egress, by kind.
#[derive(Clone, Debug, Default)]
pub struct EgressObjects {
    /// FelixConfiguration `default` `spec.egressIPSupport`.
    pub egress_ip_support: Option<String>,
    pub ip_pools: Vec<IpPool>,
    pub gateways: Vec<EgressGateway>,
    pub gateway_policies: BTreeMap<String, Vec<GatewayRule>>,
    pub cilium: Vec<CiliumPolicy>,
    pub antrea: Vec<AntreaEgress>,
    /// ExternalIPPool name -> its ranges, as CIDRs.
    pub antrea_pools: BTreeMap<String, Vec<IpNet>>,
    pub ovn: Vec<OvnEgressIp>,
    /// (namespace, name) -> `status.egressIpPrefix`, as nets.
    pub aks: BTreeMap<(String, String), Vec<IpNet>>,
    /// Objects that could not be read: `Kind namespace/name` -> why.
    pub unreadable: BTreeMap<String, String>,
}

impl EgressObjects {
    /// Adds one object of `resource`, or records why it cannot be read.
    pub fn add(&mut self, resource: Resource, object: &Value) {
        if let Err(reason) = self.try_add(resource, object) {
            let (namespace, name) = metadata_name(object);
            let kind = resource.api().2;
            let key = match namespace.is_empty() {
                true => format!("{kind} {name}"),
                false => format!("{kind} {namespace}/{name}"),
            };
            self.unreadable.insert(key, reason);
        }
    }

    fn try_add(&mut self, resource: Resource, object: &Value) -> Result<(), String> {
        let (namespace, name) = metadata_name(object);
        let parse = |value: &Value| -> Result<Typed, String> {
            Typed::deserialize_from(resource, value).map_err(|error| error.to_string())
        };
        match parse(object)? {
            Typed::Felix(felix) => {
                if name == "default" {
                    self.egress_ip_support = felix.spec.egress_ip_support;
                }
            }
            Typed::Pool(pool) => self.ip_pools.push(IpPool {
                name,
                cidr: pool.spec.cidr,
                nat_outgoing: pool.spec.nat_outgoing,
            }),
            Typed::Gateway(gateway) => {
                let mut pod_labels = gateway.spec.template.metadata.labels;
                if pod_labels.is_empty() {
                    pod_labels.insert("projectcalico.org/egw".into(), name.clone());
                }
                self.gateways.push(EgressGateway {
                    namespace,
                    name,
                    pod_labels,
                    pools: gateway
                        .spec
                        .ip_pools
                        .into_iter()
                        .filter_map(|pool| pool.name.or(pool.cidr))
                        .collect(),
                    elastic_ips: gateway.spec.aws.elastic_ips,
                });
            }
            Typed::GatewayPolicy(policy) => {
                let rules = policy
                    .spec
                    .rules
                    .into_iter()
                    .map(|rule| GatewayRule {
                        destination: rule.destination.and_then(|destination| destination.cidr),
                        gateway: rule
                            .gateway
                            .map(|gateway| (gateway.selector, gateway.namespace_selector)),
                    })
                    .collect();
                self.gateway_policies.insert(name, rules);
            }
            Typed::Cilium(policy) => {
                let spec = policy.spec;
                let mut selectors = Vec::new();
                for selector in spec.selectors {
                    let namespaces = selector
                        .namespace_selector
                        .map(|spec| spec.selector())
                        .transpose()?;
                    let pods = selector
                        .pod_selector
                        .map(|spec| spec.selector())
                        .transpose()?;
                    selectors.push((namespaces, pods));
                }
                let mut gateways = Vec::new();
                for gateway in spec
                    .egress_gateway
                    .into_iter()
                    .chain(spec.egress_gateways)
                    .chain(spec.egress_groups)
                {
                    gateways.push(CiliumGateway {
                        node_selector: gateway.node_selector.selector()?,
                        interface: gateway.interface.filter(|name| !name.is_empty()),
                        egress_ip: gateway.egress_ip,
                    });
                }
                let active_ips = policy
                    .status
                    .group_statuses
                    .into_iter()
                    .flat_map(|group| group.egress_ip_by_gateway_ip.into_values())
                    .collect();
                let policy = CiliumPolicy {
                    name,
                    selectors,
                    gateways,
                    active_ips,
                };
                self.cilium.push(policy);
            }
            Typed::Antrea(egress) => {
                let applied = egress.spec.applied_to;
                self.antrea.push(AntreaEgress {
                    name,
                    namespaces: applied
                        .namespace_selector
                        .map(|spec| spec.selector())
                        .transpose()?,
                    pods: applied
                        .pod_selector
                        .map(|spec| spec.selector())
                        .transpose()?,
                    ip: egress.status.egress_ip.or(egress.spec.egress_ip),
                    pool: egress.spec.external_ip_pool,
                });
            }
            Typed::AntreaPool(pool) => {
                let mut nets = Vec::new();
                for range in pool.spec.ip_ranges {
                    match (range.cidr, range.start, range.end) {
                        (Some(cidr), _, _) => nets.push(cidr),
                        (None, Some(start), Some(end)) => nets.extend(cover(start, end)?),
                        _ => return Err("an ipRange needs cidr, or start and end".into()),
                    }
                }
                self.antrea_pools.insert(name, nets);
            }
            Typed::Ovn(egress) => self.ovn.push(OvnEgressIp {
                name,
                namespaces: egress.spec.namespace_selector.selector()?,
                pods: egress
                    .spec
                    .pod_selector
                    .map(|spec| spec.selector())
                    .transpose()?,
                ips: egress.spec.egress_ips,
            }),
            Typed::Aks(gateway) => {
                let prefix = gateway
                    .status
                    .egress_ip_prefix
                    .or(gateway.status.public_ip_prefix)
                    .unwrap_or_default();
                let nets = prefix_nets(&prefix)?;
                self.aks.insert((namespace, name), nets);
            }
        }
        Ok(())
    }
}

/// `status.egressIpPrefix`: a CIDR, or comma-separated addresses.
fn prefix_nets(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| parse_net(part).map_err(|reason| format!("egressIpPrefix {reason}")))
        .collect()
}

/// The CIDRs covering `start..=end` exactly.
fn cover(start: IpAddr, end: IpAddr) -> Result<Vec<IpNet>, String> {
    match (start, end) {
        (IpAddr::V4(start), IpAddr::V4(end)) if start <= end => {
            Ok(ipnet::Ipv4Subnets::new(start, end, 0)
                .map(IpNet::V4)
                .collect())
        }
        (IpAddr::V6(start), IpAddr::V6(end)) if start <= end => {
            Ok(ipnet::Ipv6Subnets::new(start, end, 0)
                .map(IpNet::V6)
                .collect())
        }
        _ => Err(format!("ipRange {start}-{end} is not a range")),
    }
}

enum Typed {
    Felix(Felix),
    Pool(Pool),
    Gateway(Gateway),
    GatewayPolicy(GatewayPolicy),
    Cilium(Cilium),
    Antrea(Antrea),
    AntreaPool(AntreaPoolSpec),
    Ovn(Ovn),
    Aks(Aks),
}

impl Typed {
    /// Reads the object where it is (serde_json deserializes from a borrowed `Value`).
    fn deserialize_from(resource: Resource, value: &Value) -> serde_json::Result<Typed> {
        fn from<'a, T: Deserialize<'a>>(value: &'a Value) -> serde_json::Result<T> {
            T::deserialize(value)
        }
        Ok(match resource {
            Resource::FelixConfiguration => Typed::Felix(from(value)?),
            Resource::IpPool => Typed::Pool(from(value)?),
            Resource::EgressGateway => Typed::Gateway(from(value)?),
            Resource::EgressGatewayPolicy => Typed::GatewayPolicy(from(value)?),
            Resource::CiliumPolicy | Resource::IsovalentPolicy => Typed::Cilium(from(value)?),
            Resource::AntreaEgress => Typed::Antrea(from(value)?),
            Resource::AntreaPool => Typed::AntreaPool(from(value)?),
            Resource::OvnEgressIp => Typed::Ovn(from(value)?),
            Resource::AksGateway => Typed::Aks(from(value)?),
        })
    }
}

#[derive(Deserialize)]
struct Felix {
    #[serde(default)]
    spec: FelixSpec,
}
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FelixSpec {
    #[serde(rename = "egressIPSupport")]
    egress_ip_support: Option<String>,
}

#[derive(Deserialize)]
struct Pool {
    spec: PoolSpec,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    #[serde(deserialize_with = "net")]
    cidr: IpNet,
    #[serde(default)]
    nat_outgoing: bool,
}

#[derive(Deserialize)]
struct Gateway {
    spec: GatewaySpec,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewaySpec {
    #[serde(default)]
    ip_pools: Vec<PoolRef>,
    #[serde(default)]
    template: Template,
    #[serde(default)]
    aws: Aws,
}
#[derive(Deserialize)]
struct PoolRef {
    name: Option<String>,
    cidr: Option<String>,
}
#[derive(Default, Deserialize)]
struct Template {
    #[serde(default)]
    metadata: TemplateMeta,
}
#[derive(Default, Deserialize)]
struct TemplateMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Aws {
    #[serde(default, rename = "elasticIPs")]
    elastic_ips: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct GatewayPolicy {
    spec: GatewayPolicySpec,
}
#[derive(Deserialize)]
struct GatewayPolicySpec {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}
#[derive(Deserialize)]
struct RuleSpec {
    destination: Option<Destination>,
    gateway: Option<GatewaySelector>,
}
#[derive(Deserialize)]
struct Destination {
    #[serde(default, deserialize_with = "optional_net")]
    cidr: Option<IpNet>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewaySelector {
    #[serde(default)]
    selector: String,
    namespace_selector: Option<String>,
}

#[derive(Deserialize)]
struct Cilium {
    spec: CiliumSpec,
    #[serde(default)]
    status: CiliumStatus,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CiliumSpec {
    #[serde(default)]
    selectors: Vec<CiliumSelector>,
    egress_gateway: Option<CiliumGatewaySpec>,
    #[serde(default)]
    egress_gateways: Vec<CiliumGatewaySpec>,
    /// Isovalent's name for the gateways.
    #[serde(default)]
    egress_groups: Vec<CiliumGatewaySpec>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CiliumSelector {
    namespace_selector: Option<SelectorSpec>,
    pod_selector: Option<SelectorSpec>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CiliumGatewaySpec {
    #[serde(default)]
    node_selector: SelectorSpec,
    interface: Option<String>,
    #[serde(rename = "egressIP")]
    egress_ip: Option<IpAddr>,
}
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CiliumStatus {
    #[serde(default)]
    group_statuses: Vec<GroupStatus>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupStatus {
    #[serde(default, rename = "egressIPByGatewayIP")]
    egress_ip_by_gateway_ip: BTreeMap<String, IpAddr>,
}

#[derive(Deserialize)]
struct Antrea {
    spec: AntreaSpec,
    #[serde(default)]
    status: AntreaStatus,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AntreaSpec {
    #[serde(default)]
    applied_to: AppliedTo,
    #[serde(rename = "egressIP", default, deserialize_with = "empty_as_none")]
    egress_ip: Option<IpAddr>,
    #[serde(rename = "externalIPPool")]
    external_ip_pool: Option<String>,
}
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppliedTo {
    pod_selector: Option<SelectorSpec>,
    namespace_selector: Option<SelectorSpec>,
}
#[derive(Default, Deserialize)]
struct AntreaStatus {
    #[serde(rename = "egressIP", default, deserialize_with = "empty_as_none")]
    egress_ip: Option<IpAddr>,
}

#[derive(Deserialize)]
struct AntreaPoolSpec {
    spec: AntreaPoolRanges,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AntreaPoolRanges {
    #[serde(default)]
    ip_ranges: Vec<IpRange>,
}
#[derive(Deserialize)]
struct IpRange {
    #[serde(default, deserialize_with = "optional_net")]
    cidr: Option<IpNet>,
    start: Option<IpAddr>,
    end: Option<IpAddr>,
}

#[derive(Deserialize)]
struct Ovn {
    spec: OvnSpec,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OvnSpec {
    #[serde(rename = "egressIPs")]
    egress_ips: Vec<IpAddr>,
    namespace_selector: SelectorSpec,
    pod_selector: Option<SelectorSpec>,
}

#[derive(Deserialize)]
struct Aks {
    #[serde(default)]
    status: AksStatus,
}
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AksStatus {
    egress_ip_prefix: Option<String>,
    public_ip_prefix: Option<String>,
}

/// A CIDR (host bits cleared) or a single address.
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an address or a CIDR"))
}

fn net<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    parse_net(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

fn optional_net<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpNet>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_net(&text))
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// An address field the API may leave as `""` until it is assigned.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn structured_selectors_become_label_selectors() {
        let spec: SelectorSpec = serde_json::from_value(json!({
            "matchLabels": {"k8s:io.kubernetes.pod.namespace": "payments"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        let selector = spec.selector().unwrap();
        let labels: BTreeMap<String, String> = [
            (
                "io.kubernetes.pod.namespace".to_owned(),
                "payments".to_owned(),
            ),
            ("tier".to_owned(), "api".to_owned()),
        ]
        .into();
        use crate::cluster::Selects;
        assert!(selector.selects(&labels));
        let bad: SelectorSpec =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}))
                .unwrap();
        assert!(bad.selector().unwrap_err().contains("Near"));
    }

    #[test]
    fn unreadable_objects_are_reported_by_kind_and_name() {
        let mut objects = EgressObjects::default();
        objects.add(
            Resource::AntreaPool,
            &json!({"metadata": {"name": "pool"}, "spec": {"ipRanges": [
                {"start": "10.0.0.4", "end": "10.0.0.9"}]}}),
        );
        assert_eq!(
            objects.antrea_pools["pool"],
            ["10.0.0.4/30", "10.0.0.8/31"]
                .map(|net| net.parse::<IpNet>().unwrap())
                .to_vec()
        );
        objects.add(
            Resource::OvnEgressIp,
            &json!({"metadata": {"name": "eip"}, "spec": {"egressIPs": ["not-an-ip"],
                "namespaceSelector": {}}}),
        );
        assert!(objects.unreadable["EgressIP eip"].contains("invalid IP address"));
        objects.add(
            Resource::AksGateway,
            &json!({"metadata": {"namespace": "web", "name": "gw"},
                    "status": {"egressIpPrefix": "20.1.2.8/29"}}),
        );
        assert_eq!(
            objects.aks[&("web".into(), "gw".into())],
            vec!["20.1.2.8/29".parse::<IpNet>().unwrap()]
        );
    }
}
