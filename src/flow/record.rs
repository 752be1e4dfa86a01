//! The flow record model: one observed flow between two endpoints, as any collector reports it.
//!
//! This module owns the collector-neutral shape only. Turning a collector's line into a
//! [`FlowRecord`] lives in the format modules (`calico`); adding cluster context lives in
//! `enrich`. Absent values are `None`, never a sentinel string such as `-`.

use std::fmt;
use std::net::IpAddr;

/// A string of the record: up to 24 bytes are stored inline, so most names, namespaces and
/// labels cost no allocation.
pub type Text = compact_str::CompactString;

/// One flow (or one aggregate of flows) between a source and a destination endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowRecord {
    /// Start of the reporting window, Unix epoch milliseconds.
    pub start_ms: i64,
    /// End of the reporting window, Unix epoch milliseconds.
    pub end_ms: i64,
    pub proto: Protocol,
    pub action: Action,
    pub reporter: Reporter,
    pub source: Endpoint,
    pub dest: Endpoint,
    /// The Kubernetes service the destination was reached through, when the collector knew it.
    pub dest_service: Option<ServiceRef>,
    /// Domain names seen for the destination IP (external destinations only).
    pub dest_domains: Vec<Text>,
    /// The enforced policy trace, each entry `<idx>|<tier>|<policy>|<action>|<rule>`.
    pub policies: Vec<Text>,
    pub counters: Counters,
    pub process: Process,
    /// The node that reported the flow, when the log shipper recorded it.
    pub host: Option<Text>,
}

/// One side of a flow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Endpoint {
    /// `None` when the collector aggregated IPs away.
    pub ip: Option<IpAddr>,
    /// `None` when aggregated, and for protocols without ports.
    pub port: Option<u16>,
    /// Pod (or host endpoint) name; `None` when aggregated or not a pod.
    pub name: Option<Text>,
    /// Aggregated name: `<prefix>-*` for pods of one controller, or a network set's name.
    pub name_aggr: Option<Text>,
    pub namespace: Option<Text>,
    /// Labels as `key=value` strings, in the collector's order. `None` when not reported.
    pub labels: Option<Vec<Text>>,
    pub kind: Option<EndpointKind>,
    /// The owning workload as `Kind/name`, when the collector reports it (Hubble does).
    pub workload: Option<Text>,
}

/// What kind of endpoint Calico saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    /// A workload endpoint: a pod.
    Workload,
    /// A host endpoint: a node interface.
    Host,
    /// A member of a (Global)NetworkSet.
    NetworkSet,
    /// Anything else: an address outside the cluster.
    Network,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Workload => "wep",
            EndpointKind::Host => "hep",
            EndpointKind::NetworkSet => "ns",
            EndpointKind::Network => "net",
        }
    }
}

/// A Kubernetes service reference as reported by the collector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRef {
    pub namespace: Option<Text>,
    pub name: Text,
    /// The service port's name.
    pub port_name: Option<Text>,
    pub port: Option<u16>,
}

/// Counters accumulated over the reporting window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub num_flows: u64,
    pub num_flows_started: u64,
    pub num_flows_completed: u64,
}

/// The process behind the flow on the reporting node, when collected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Process {
    pub name: Option<Text>,
    pub id: Option<Text>,
    pub args: Vec<Text>,
}

/// The policy verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Which side of the flow reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reporter {
    /// The source's node (an outbound flow from its point of view).
    #[default]
    Source,
    /// The destination's node (inbound).
    Dest,
    /// A node that forwarded the traffic.
    Forward,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "src",
            Reporter::Dest => "dst",
            Reporter::Forward => "fwd",
        }
    }
}

/// The IP protocol, by name where one is well known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Sctp,
    Ipip,
    Esp,
    /// Any other protocol, by its IANA number.
    Number(u8),
}

impl Protocol {
    /// Parses the names Calico writes (`tcp`, `icmp6`, ...) or a protocol number.
    pub fn parse(text: &str) -> Option<Protocol> {
        let proto = match text.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "icmp6" | "icmpv6" | "ipv6-icmp" => Protocol::Icmpv6,
            "sctp" => Protocol::Sctp,
            "ipip" => Protocol::Ipip,
            "esp" => Protocol::Esp,
            other => return other.parse::<u8>().ok().map(Protocol::from_number),
        };
        Some(proto)
    }

    /// Maps an IANA protocol number to its well-known name where there is one.
    pub fn from_number(number: u8) -> Protocol {
        match number {
            1 => Protocol::Icmp,
            4 => Protocol::Ipip,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            50 => Protocol::Esp,
            58 => Protocol::Icmpv6,
            132 => Protocol::Sctp,
            other => Protocol::Number(other),
        }
    }
}

impl Protocol {
    /// The upper-case name CEF's `proto` key expects (`TCP`, `UDP`, ...), or `None` for a
    /// protocol known only by number.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
            Protocol::Sctp => "SCTP",
            Protocol::Ipip => "IPIP",
            Protocol::Esp => "ESP",
            Protocol::Number(_) => return None,
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self) {
            (Some(name), _) => f.write_str(name),
            (None, Protocol::Number(number)) => write!(f, "{number}"),
            (None, _) => unreachable!("every other protocol has a name"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_and_numbers() {
        let check = |text: &str, expected: Option<Protocol>| {
            assert_eq!(Protocol::parse(text), expected, "{text}");
        };
        check("tcp", Some(Protocol::Tcp));
        check("UDP", Some(Protocol::Udp));
        check("icmp6", Some(Protocol::Icmpv6));
        check("6", Some(Protocol::Tcp));
        check("47", Some(Protocol::Number(47)));
        check("256", None);
        check("gre!", None);
        assert_eq!(Protocol::Number(47).to_string(), "47");
        assert_eq!(Protocol::Icmpv6.to_string(), "ICMPv6");
    }
}
