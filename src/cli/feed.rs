//! `threatflow feed normalize`: a feed file in, its normalized CIDRs out, one per line, always
//! with a prefix length, IPv4 first then IPv6, each ascending. Only the guards given apply.
//! `threatflow feed render`: what a configured feed would publish now. `threatflow status`: the
//! feeds of a running instance.

use std::io::{BufWriter, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use clap::ValueEnum;

use ipnet::IpNet;

use crate::feeds::format::{self, FeedFormat};
use crate::feeds::normalize::{self, Guards};

#[derive(clap::Args)]
pub struct NormalizeArgs {
    /// The feed file, or `-` for standard input.
    #[arg(value_name = "FILE|-")]
    pub input: PathBuf,
    #[arg(long, value_enum, default_value = "newline")]
    pub format: FeedFormatArg,
    /// csv: the address column, by 1-based index or header name.
    #[arg(long, value_name = "N|NAME")]
    pub csv_column: Option<format::Column>,
    /// csv: the field delimiter.
    #[arg(long, value_name = "CHAR")]
    pub csv_delimiter: Option<char>,
    /// json: dot-separated path to the array.
    #[arg(long, value_name = "PATH")]
    pub json_path: Option<String>,
    /// json, jsonl: the object field holding the address.
    #[arg(long, value_name = "NAME")]
    pub json_field: Option<String>,
    /// Never output these addresses (subtracted from the feed); a CIDR or an address;
    /// repeatable.
    #[arg(long, value_name = "CIDR", value_parser = never_block_entry)]
    pub never_block: Vec<ipnet::IpNet>,
    /// Drop IPv4 entries broader than this prefix length.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=32))]
    pub min_prefix_v4: Option<u8>,
    /// Drop IPv6 entries broader than this prefix length.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub min_prefix_v6: Option<u8>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FeedFormatArg {
    Newline,
    Csv,
    Json,
    Jsonl,
}

/// Runs `threatflow feed normalize` with its command-line arguments.
pub fn normalize_command(args: NormalizeArgs) -> anyhow::Result<NormalizeSummary> {
    use crate::feeds::format::FormatKind;
    let format = FeedFormat {
        kind: match args.format {
            FeedFormatArg::Newline => FormatKind::Newline,
            FeedFormatArg::Csv => FormatKind::Csv,
            FeedFormatArg::Json => FormatKind::Json,
            FeedFormatArg::Jsonl => FormatKind::Jsonl,
        },
        column: args.csv_column,
        delimiter: args.csv_delimiter,
        path: args.json_path,
        field: args.json_field,
        ..FeedFormat::default()
    };
    let mut problems = crate::problems::Problems::default();
    format.validate("--format", &mut problems);
    if !problems.is_empty() {
        anyhow::bail!("the format options do not fit:\n{problems}");
    }
    let guards = Guards {
        never_block: crate::netset::NetSet::from_nets(&args.never_block),
        min_prefix_v4: args.min_prefix_v4,
        min_prefix_v6: args.min_prefix_v6,
        max_entries: None,
    };
    let stdout = std::io::stdout().lock();
    if args.input.as_os_str() == "-" {
        normalize(&format, &guards, std::io::stdin().lock(), stdout)
    } else {
        let file = std::fs::File::open(&args.input)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", args.input.display()))?;
        normalize(&format, &guards, file, stdout)
    }
}

fn never_block_entry(text: &str) -> Result<ipnet::IpNet, String> {
    crate::netset::parse_cidr(text)
        .ok_or_else(|| format!("`{text}` is not a CIDR or an IP address"))
}

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

/// Pulls the feed named `feed` from the config at `config_path` and renders it as YAML
/// documents.
pub async fn render(config_path: &std::path::Path, feed: &str) -> anyhow::Result<String> {
    use crate::feeds::sync::{self, FeedMetrics, FeedRunner, StatusBoard};
    let config = crate::config::Config::load_valid(config_path)?;
    let Some(feed_config) = config.feeds.iter().find(|candidate| candidate.name == feed) else {
        let names: Vec<&str> = config.feeds.iter().map(|feed| feed.name.as_str()).collect();
        anyhow::bail!(
            "{} has no feed `{feed}` (it has: {})",
            config_path.display(),
            names.join(", ")
        );
    };
    let fetcher = sync::fetcher(&config.feed_settings)?;
    let mut runner = FeedRunner::new(
        feed_config.clone(),
        &config.feed_settings,
        fetcher,
        None,
        None,
        FeedMetrics::default(),
        StatusBoard::default(),
    )?;
    let rendered = runner
        .render_now()
        .await
        .map_err(|error| anyhow::anyhow!(crate::telemetry::ErrorChain(&error).to_string()))?;
    let mut yaml = String::new();
    for object in &rendered {
        yaml.push_str("---\n");
        yaml.push_str(&object.to_yaml());
    }
    Ok(yaml)
}

/// Reads `/status` from a running instance at `addr`: a table, or the JSON itself.
pub async fn status(addr: &str, json: bool) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("http://{addr}/status");
    let body = reqwest::get(&url)
        .await
        .and_then(|response| response.error_for_status())
        .map_err(|error| anyhow::anyhow!("cannot read {url}: {error} (is threatflow running with telemetry.listen_addr {addr}?)"))?
        .text()
        .await?;
    if json {
        return Ok(body + "\n");
    }
    let status: serde_json::Value = serde_json::from_str(&body)?;
    let row = |cells: [String; 8]| {
        format!(
            "{:<24} {:<8} {:>9} {:>6}  {:<20}  {:<20}  {:<14} {}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    let mut table = row([
        "FEED",
        "MODE",
        "ENTRIES",
        "SHARDS",
        "LAST FETCH",
        "LAST APPLY",
        "OUTCOME",
        "ERROR",
    ]
    .map(str::to_owned));
    for feed in status["feeds"].as_array().into_iter().flatten() {
        let text = |key: &str| feed[key].as_str().unwrap_or("-").to_owned();
        let number = |key: &str| feed[key].as_u64().unwrap_or(0).to_string();
        table.push_str(&row([
            text("name"),
            text("mode"),
            number("entries"),
            number("shards"),
            text("last_fetch"),
            text("last_successful_apply"),
            text("last_outcome"),
            text("last_error"),
        ]));
    }
    let kubernetes = &status["kubernetes"];
    if kubernetes.is_object() {
        let objects = &kubernetes["objects"];
        let count = |key: &str| objects[key].as_u64().unwrap_or(0);
        let state = match kubernetes["synced"].as_bool() {
            Some(true) => "synced".to_owned(),
            _ => format!(
                "waiting for the initial lists of {}",
                kubernetes["waiting_for"]
            ),
        };
        table.push_str(&format!(
            "\nkubernetes: {state}; {} pods, {} services, {} nodes, {} namespaces, {} jobs; {} endpoint addresses ({} released, kept for late flows)\n",
            count("pods"),
            count("services"),
            count("nodes"),
            count("namespaces"),
            count("jobs"),
            kubernetes["addresses"]["endpoint"].as_u64().unwrap_or(0),
                        kubernetes["addresses"]["released"].as_u64().unwrap_or(0),
        ));
    }
    let targets = status["firewall"].as_array().cloned().unwrap_or_default();
    if !targets.is_empty() {
        let row = |cells: [String; 7]| {
            format!(
                "{:<24} {:<13} {:<8} {:<20} {:>6} {:>7}  {}\n",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
            )
        };
        table.push('\n');
        table.push_str(&row([
            "TARGET",
            "KIND",
            "STATE",
            "LAST SYNC",
            "OWNED",
            "PENDING",
            "LAST ERROR",
        ]
        .map(str::to_owned)));
        for target in &targets {
            let text = |key: &str| target[key].as_str().unwrap_or("-").to_owned();
            let number = |key: &str| target[key].as_u64().unwrap_or(0).to_string();
            let error = &target["last_error"];
            let error = match (error["message"].as_str(), error["object"].as_str()) {
                (Some(message), Some(object)) => format!("{object}: {message}"),
                (Some(message), None) => message.to_owned(),
                _ => "-".to_owned(),
            };
            table.push_str(&row([
                text("name"),
                text("kind"),
                text("state"),
                text("last_sync"),
                number("owned_objects"),
                number("pending_operations"),
                error,
            ]));
        }
    }
    let sources = status["policy_import"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !sources.is_empty() {
        let row = |cells: [String; 8]| {
            format!(
                "{:<16} {:<13} {:<16} {:<10} {:>5} {:>7} {:>7}  {}\n",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
            )
        };
        table.push('\n');
        table.push_str(&row([
            "POLICY SOURCE",
            "KIND",
            "TIER",
            "STATE",
            "RULES",
            "REFUSED",
            "OBJECTS",
            "MESSAGE",
        ]
        .map(str::to_owned)));
        for source in &sources {
            let text = |key: &str| source[key].as_str().unwrap_or("-").to_owned();
            let number = |key: &str| source[key].as_u64().unwrap_or(0).to_string();
            let refused = source["skipped"].as_array().map_or(0, Vec::len);
            table.push_str(&row([
                text("name"),
                text("kind"),
                format!("{} ({})", text("tier"), text("mode")),
                text("state"),
                number("translated"),
                refused.to_string(),
                number("objects"),
                text("message"),
            ]));
        }
    }
    let egress = &status["egress_identities"];
    if egress.is_object() {
        table.push_str(&format!(
            "\negress identities ({}){}\n",
            egress["mechanism"]
                .as_str()
                .unwrap_or("mechanism not known yet"),
            egress["error"]
                .as_str()
                .map(|error| format!(": {error}"))
                .unwrap_or_default(),
        ));
        if let Some(identities) = egress["identities"].as_object() {
            for (namespace, identity) in identities {
                let nets: Vec<&str> = identity["nets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_str)
                    .collect();
                let weak = if identity["weak"] == true {
                    " (weak: node addresses)"
                } else {
                    ""
                };
                table.push_str(&format!("  {namespace:<24} {}{weak}\n", nets.join(" ")));
            }
        }
        for warning in egress["warnings"].as_array().into_iter().flatten() {
            table.push_str(&format!(
                "  warning {}: {}\n",
                warning["kind"].as_str().unwrap_or("-"),
                warning["message"].as_str().unwrap_or("-")
            ));
        }
    }
    if status["leader"] == false {
        table.push_str(
            "
leader: no; another replica publishes to the cluster (feeds here are pulled and matched: standby)
",
        );
    }
    Ok(table)
}
