//! `threatflow feed normalize`: a feed file in, its normalized CIDRs out, one per line, always
//! with a prefix length, IPv4 first then IPv6, each ascending. Only the guards given apply.

use std::io::{BufWriter, Read, Write};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::feeds::format::{self, FeedFormat};
use crate::feeds::normalize::{self, Guards};

/// What a normalization did, for the summary on standard error.
#[derive(Clone, Debug, Default)]
pub struct NormalizeSummary {
    pub entries: u64,
    pub cidrs_v4: u64,
    pub cidrs_v6: u64,
    pub rejected: String,
    pub removed: String,
    pub examples: Vec<String>,
}

impl std::fmt::Display for NormalizeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for example in &self.examples {
            writeln!(f, "rejected {example}")?;
        }
        write!(
            f,
            "{} entries -> {} CIDRs ({} IPv4, {} IPv6)",
            self.entries,
            self.cidrs_v4 + self.cidrs_v6,
            self.cidrs_v4,
            self.cidrs_v6
        )?;
        if !self.rejected.is_empty() {
            write!(f, "; rejected: {}", self.rejected)?;
        }
        if !self.removed.is_empty() {
            write!(f, "; removed by guards: {}", self.removed)?;
        }
        Ok(())
    }
}

/// Reads a whole feed from `input` and writes its normalized CIDRs to `output`.
pub fn normalize(
    format: &FeedFormat,
    guards: &Guards,
    mut input: impl Read,
    output: impl Write,
) -> anyhow::Result<NormalizeSummary> {
    let mut content = Vec::new();
    input.read_to_end(&mut content)?;
    let parsed = format::parse(format, &content)?;
    drop(content);
    let mut summary = NormalizeSummary {
        entries: parsed.entries,
        rejected: parsed.rejected_summary(),
        examples: parsed.examples.clone(),
        ..NormalizeSummary::default()
    };
    let normalized = normalize::normalize(parsed, guards)?;
    summary.removed = normalized.removed_summary();
    let mut output = BufWriter::with_capacity(1 << 20, output);
    let mut line = Vec::with_capacity(64);
    for net in normalized.set.cidrs() {
        line.clear();
        write_net(net, &mut line);
        line.push(b'\n');
        output.write_all(&line)?;
        match net {
            IpNet::V4(_) => summary.cidrs_v4 += 1,
            IpNet::V6(_) => summary.cidrs_v6 += 1,
        }
    }
    output.flush()?;
    Ok(summary)
}

/// `a.b.c.d/n` without the formatting machinery (IPv4 feeds run to millions of lines).
fn write_net(net: IpNet, out: &mut Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    match net.addr() {
        IpAddr::V4(address) => {
            for (i, octet) in address.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(address) => out.extend_from_slice(address.to_string().as_bytes()),
    }
    out.push(b'/');
    out.extend_from_slice(digits.format(net.prefix_len()).as_bytes());
}
