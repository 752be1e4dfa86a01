//! The `threatflow` binary: parses the command line, loads config, starts logging and hands
//! over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use threatflow::app::{self, RunOptions};
use threatflow::cli;
use threatflow::cluster::Inventory;
use threatflow::config::Config;
use threatflow::enrich::EndpointIndex;
use threatflow::feeds;
use threatflow::flow::FlowFormat;
use threatflow::sink::syslog::SyslogConfig;
use threatflow::sink::OutputFormat;
use threatflow::telemetry;

#[derive(Parser)]
#[command(
    name = "threatflow",
    version,
    about = "Kubernetes flow logs, enriched with workload identity, into your SIEM as CEF."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline described by a config file.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Process the input that exists now, deliver it, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Check a config file: print every problem, or a summary of what would run.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Enrich flow records from standard input onto standard output, in input order.
    Enrich(EnrichArgs),
    /// Work with threat feeds.
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
    },
    /// Show the status of a running instance's feeds (from its telemetry listener).
    Status {
        /// The instance's `telemetry.listen_addr`.
        #[arg(long, default_value = "127.0.0.1:9898")]
        addr: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the config file.
    Schema,
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum FeedCommand {
    /// Print a feed's normalized CIDRs: host bits masked, deduplicated, merged to the minimal
    /// cover, IPv4 then IPv6, ascending. Only the guards given as flags apply.
    Normalize(NormalizeArgs),
    /// Pull a configured feed now and print the GlobalNetworkSets (and policy) a sync would
    /// apply, as YAML, without applying them.
    Render {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The feed's name in the config.
        #[arg(long, value_name = "NAME")]
        feed: String,
    },
}

#[derive(clap::Args)]
struct NormalizeArgs {
    /// The feed file, or `-` for standard input.
    #[arg(value_name = "FILE|-")]
    input: PathBuf,
    #[arg(long, value_enum, default_value = "newline")]
    format: FeedFormatArg,
    /// csv: the address column, by 1-based index or header name.
    #[arg(long, value_name = "N|NAME")]
    csv_column: Option<feeds::format::Column>,
    /// csv: the field delimiter.
    #[arg(long, value_name = "CHAR")]
    csv_delimiter: Option<char>,
    /// json: dot-separated path to the array.
    #[arg(long, value_name = "PATH")]
    json_path: Option<String>,
    /// json, jsonl: the object field holding the address.
    #[arg(long, value_name = "NAME")]
    json_field: Option<String>,
    /// Never output these addresses (subtracted from the feed); a CIDR or an address;
    /// repeatable.
    #[arg(long, value_name = "CIDR", value_parser = never_block_entry)]
    never_block: Vec<ipnet::IpNet>,
    /// Drop IPv4 entries broader than this prefix length.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=32))]
    min_prefix_v4: Option<u8>,
    /// Drop IPv6 entries broader than this prefix length.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=128))]
    min_prefix_v6: Option<u8>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FeedFormatArg {
    Newline,
    Csv,
    Json,
    Jsonl,
}

#[derive(clap::Args)]
struct EnrichArgs {
    /// The collector format of the input.
    #[arg(long, value_enum, default_value = "calico")]
    input_format: InputFormat,
    /// A `kubectl get pods,services,namespaces,nodes,jobs -A -o json` file.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cef")]
    output_format: OutputFormatArg,
    /// Take CEF settings and the cluster name from this config file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Sent as the cluster name (CEF deviceExternalId); overrides the config's.
    #[arg(long)]
    cluster_name: Option<String>,
    /// Lines longer than this are rejected.
    #[arg(long, default_value_t = 64 * 1024)]
    max_line_bytes: usize,
    /// Exit with status 1 if any line was rejected.
    #[arg(long)]
    strict: bool,
    /// Match flows against a threat feed file (newline format: addresses, CIDRs, ranges);
    /// repeatable. Matches switch the event to the threat class and fill CEF `cs6`.
    #[arg(long, value_name = "NAME=FILE")]
    feed: Vec<String>,
    /// Send to a syslog receiver instead of standard output: `udp://HOST:PORT`,
    /// `tcp://HOST:PORT` or `tls://HOST:PORT`. Exits once every record is acknowledged (or
    /// given up on), with a report of what was sent and dropped.
    #[arg(long, value_name = "URL")]
    syslog: Option<String>,
    /// Stream framing for --syslog: octet counting (RFC 6587) or one message per line.
    #[arg(long, value_enum, default_value = "octet", requires = "syslog")]
    framing: FramingArg,
    /// Syslog header format for --syslog.
    #[arg(long, value_enum, default_value = "rfc5424", requires = "syslog")]
    syslog_format: SyslogFormatArg,
    /// CA certificates (PEM) to verify a tls:// receiver with; default: the system's.
    #[arg(long, value_name = "FILE", requires = "syslog")]
    ca: Option<PathBuf>,
    /// Give up on a batch the receiver has not taken after this many seconds.
    #[arg(long, default_value_t = 30, requires = "syslog")]
    syslog_timeout_secs: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum FramingArg {
    Octet,
    Lf,
}

#[derive(Clone, Copy, ValueEnum)]
enum SyslogFormatArg {
    Rfc5424,
    Rfc3164,
}

/// The `--syslog` options as a syslog sink's settings, checked like the config file's.
fn syslog_target(args: &EnrichArgs) -> anyhow::Result<Option<SyslogConfig>> {
    let Some(url) = &args.syslog else {
        return Ok(None);
    };
    let invalid = || {
        anyhow::anyhow!(
            "--syslog {url}: expected udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT"
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if !matches!(scheme, "udp" | "tcp" | "tls") {
        return Err(invalid());
    }
    let mut settings = serde_json::json!({
        "host": host,
        "port": port,
        "transport": scheme,
        "framing": match args.framing {
            FramingArg::Octet => "octet_counting",
            FramingArg::Lf => "lf",
        },
        "format": match args.syslog_format {
            SyslogFormatArg::Rfc5424 => "rfc5424",
            SyslogFormatArg::Rfc3164 => "rfc3164",
        },
    });
    if let Some(ca) = &args.ca {
        settings["tls"] = serde_json::json!({ "ca_file": ca });
    }
    let config: SyslogConfig = serde_json::from_value(settings)?;
    let mut problems = threatflow::problems::Problems::default();
    config.validate("--syslog", &mut problems);
    if !problems.is_empty() {
        anyhow::bail!("the --syslog options do not fit:\n{problems}");
    }
    Ok(Some(config))
}

#[derive(Clone, Copy, ValueEnum)]
enum InputFormat {
    Calico,
    Hubble,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormatArg {
    Cef,
    Leef,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("threatflow {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Schema => {
            print!("{}", threatflow::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Check { config } => match cli::check::check(&config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(report) => {
                eprintln!("{report}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, once } => run(config, once),
        Command::Feed {
            command: FeedCommand::Render { config, feed },
        } => match block_on(cli::feed::render(&config, &feed)) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Status { addr, json } => match block_on(cli::feed::status(&addr, json)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Feed {
            command: FeedCommand::Normalize(args),
        } => match feed_normalize(args) {
            Ok(summary) => {
                eprintln!("{summary}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        },
        Command::Enrich(args) => {
            let strict = args.strict;
            match enrich(args) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    let undelivered = summary
                        .syslog
                        .as_ref()
                        .is_some_and(|(_, report)| report.undelivered > 0);
                    if undelivered || (strict && summary.rejected.total() > 0) {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn run(config_path: PathBuf, once: bool) -> ExitCode {
    let config = match Config::load_valid(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        tokio::spawn(wait_for_signals(shutdown.clone()));
        run_reloading(config_path, config, once, shutdown).await
    });
    match result {
        Ok(report) if report.undelivered == 0 => {
            tracing::info!(
                records = report.records,
                rejected = report.rejected.total(),
                "stopped"
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            tracing::error!(
                undelivered = report.undelivered,
                "stopped with undelivered records"
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "stopped");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How often a daemon looks for a changed config file.
const CONFIG_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the pipeline; a daemon also watches its config file and, when it changes to a valid
/// config, drains the running pipeline (records delivered, positions saved) and starts the new
/// one in the same process. An invalid change is refused: logged, counted, shown on /readyz,
/// and the running config stays.
async fn run_reloading(
    path: PathBuf,
    mut config: threatflow::config::Config,
    once: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<app::RunReport> {
    let options = RunOptions {
        once,
        ..RunOptions::default()
    };
    let mut total = app::RunReport::default();
    loop {
        let run_stop = shutdown.child_token();
        let changed = std::sync::Arc::new(parking_lot::Mutex::new(None));
        let watcher = (!once).then(|| {
            tokio::spawn(watch_config(
                path.clone(),
                config.clone(),
                options.clone(),
                changed.clone(),
                run_stop.clone(),
            ))
        });
        let report = app::run(config, options.clone(), run_stop).await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        let report = report?;
        total.records += report.records;
        total.rejected.merge(&report.rejected);
        total.undelivered += report.undelivered;
        let next = changed.lock().take();
        match next {
            Some(next) if !shutdown.is_cancelled() => {
                tracing::info!("running the new configuration");
                config = next;
            }
            _ => return Ok(total),
        }
    }
}

/// Polls the config file (a ConfigMap's kubelet swaps a symlink, so content is compared, not
/// modification times). A valid change goes into `changed` and stops the running pipeline.
async fn watch_config(
    path: PathBuf,
    running: threatflow::config::Config,
    options: RunOptions,
    changed: std::sync::Arc<parking_lot::Mutex<Option<threatflow::config::Config>>>,
    run_stop: CancellationToken,
) {
    let outcome = |outcome| {
        options
            .config_reloads
            .get_or_create(&app::OutcomeLabels { outcome })
            .inc();
    };
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(CONFIG_CHECK_INTERVAL).await;
        let Ok(current) = std::fs::read(&path) else {
            continue;
        };
        if last.as_ref() == Some(&current) {
            continue;
        }
        let parsed =
            threatflow::config::Config::parse_valid(&path, &String::from_utf8_lossy(&current));
        last = Some(current);
        match parsed {
            Ok(config) if config == running => {
                options.readiness.clear_note("config");
            }
            Ok(config) => {
                tracing::info!(path = %path.display(), "the config file changed; draining the running pipeline to apply it");
                options.readiness.clear_note("config");
                outcome("applied");
                *changed.lock() = Some(config);
                run_stop.cancel();
                return;
            }
            Err(error) => {
                outcome("refused");
                let message = format!("{error:#}");
                tracing::error!(path = %path.display(), error = %message, "the changed config file is invalid; refused, the running config stays");
                options.readiness.note(
                    "config",
                    format!(
                        "a change to {} was refused, the running config stays: {}",
                        path.display(),
                        message.replace('\n', " ")
                    ),
                );
            }
        }
    }
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
async fn wait_for_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    for attempt in 0..2 {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        if attempt == 0 {
            tracing::info!(
                "shutting down: draining in-flight records (signal again to exit at once)"
            );
            shutdown.cancel();
        }
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

fn enrich(args: EnrichArgs) -> anyhow::Result<cli::enrich::EnrichSummary> {
    let mut config = match &args.config {
        Some(path) => Config::load_valid(path)?,
        None => Config::from_yaml("{sources: [], sinks: []}")
            .map_err(|problem| anyhow::anyhow!("{problem}"))?,
    };
    if args.cluster_name.is_some() {
        config.cluster_name = args.cluster_name.clone();
    }
    let index = match &args.inventory {
        Some(path) => EndpointIndex::build(&Inventory::load(path)?, &config.enrichment.labels),
        None => EndpointIndex::default(),
    };
    if args.max_line_bytes == 0 {
        anyhow::bail!("--max-line-bytes must be at least 1");
    }
    if args.syslog.is_some() {
        // Delivery retries and give-ups are reported on stderr as the daemon logs them.
        telemetry::init_logging(&threatflow::telemetry::TelemetryConfig {
            log_level: "warn".into(),
            ..config.telemetry.clone()
        });
    }
    let options = cli::enrich::EnrichOptions {
        format: match args.input_format {
            InputFormat::Calico => FlowFormat::Calico,
            InputFormat::Hubble => FlowFormat::Hubble,
        },
        output: match args.output_format {
            OutputFormatArg::Cef => OutputFormat::Cef,
            OutputFormatArg::Leef => OutputFormat::Leef,
            OutputFormatArg::Json => OutputFormat::Json,
        },
        max_line_bytes: args.max_line_bytes,
        config: &config,
        index,
        show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        threats: threat_feeds(&args.feed)?,
        syslog: syslog_target(&args)?.map(|syslog| {
            (
                syslog,
                std::time::Duration::from_secs(args.syslog_timeout_secs),
            )
        }),
    };
    let summary = cli::enrich::run(
        options,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        // Not locked for the whole run: the syslog sink logs on stderr from its own thread.
        std::io::stderr(),
    )?;
    Ok(summary)
}

fn feed_normalize(args: NormalizeArgs) -> anyhow::Result<cli::feed::NormalizeSummary> {
    use feeds::format::{FeedFormat, FormatKind};
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
    let mut problems = threatflow::problems::Problems::default();
    format.validate("--format", &mut problems);
    if !problems.is_empty() {
        anyhow::bail!("the format options do not fit:\n{problems}");
    }
    let guards = feeds::normalize::Guards {
        never_block: threatflow::netset::NetSet::from_nets(&args.never_block),
        min_prefix_v4: args.min_prefix_v4,
        min_prefix_v6: args.min_prefix_v6,
        max_entries: None,
    };
    let stdout = std::io::stdout().lock();
    if args.input.as_os_str() == "-" {
        cli::feed::normalize(&format, &guards, std::io::stdin().lock(), stdout)
    } else {
        let file = std::fs::File::open(&args.input)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", args.input.display()))?;
        cli::feed::normalize(&format, &guards, file, stdout)
    }
}

/// Runs a future to completion on a small runtime, for one-shot commands.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// `--feed NAME=FILE` arguments as a threat matcher.
fn threat_feeds(arguments: &[String]) -> anyhow::Result<threatflow::enrich::ThreatMatcher> {
    use threatflow::enrich::ThreatFeed;
    use threatflow::feeds::format::{self, FeedFormat};
    use threatflow::netset::NetSet;
    let matcher = threatflow::enrich::ThreatMatcher::default();
    for argument in arguments {
        let Some((name, path)) = argument
            .split_once('=')
            .filter(|(name, path)| !name.is_empty() && !path.is_empty())
        else {
            anyhow::bail!("--feed `{argument}` must be NAME=FILE");
        };
        let content = std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("cannot read feed {name} from {path}: {error}"))?;
        let parsed = format::parse(&FeedFormat::default(), &content)?;
        if !parsed.rejected.is_empty() {
            eprintln!("feed {name}: rejected {}", parsed.rejected_summary());
        }
        let set = NetSet::from_ranges(parsed.v4, parsed.v6);
        matcher.update(
            ThreatFeed {
                name: name.into(),
                severity: None,
            },
            std::sync::Arc::new(set),
        );
    }
    Ok(matcher)
}

fn never_block_entry(text: &str) -> Result<ipnet::IpNet, String> {
    threatflow::netset::parse_cidr(text)
        .ok_or_else(|| format!("`{text}` is not a CIDR or an IP address"))
}
