//! The `threatflow` binary: parses the command line, calls into the library, and turns the
//! outcome into an exit code.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use threatflow::app;
use threatflow::cli;
use threatflow::config::Config;
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
    Enrich(cli::enrich::EnrichArgs),
    /// Work with threat feeds.
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
    },
    /// Work with firewall targets.
    Firewall {
        #[command(subcommand)]
        command: FirewallCommand,
    },
    /// Work with the admission guard for egress identities.
    Admission {
        #[command(subcommand)]
        command: AdmissionCommand,
    },
    /// Show the status of a running instance's feeds, firewall targets and cluster model
    /// (from its telemetry listener).
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
    Normalize(cli::feed::NormalizeArgs),
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

#[derive(Subcommand)]
enum FirewallCommand {
    /// Print what a sync would change on each firewall target (reads the targets, writes
    /// nothing).
    Plan {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The cluster as a `kubectl get pods,namespaces,nodes,globalnetworkpolicies -A -o
        /// json` file; default: the config's inventory, else the API server.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
    },
    /// Print the Calico tier a FortiManager export or a Panorama configuration translates
    /// into (YAML on standard output, refused rules on standard error).
    Import(cli::firewall::ImportArgs),
}

#[derive(Subcommand)]
enum AdmissionCommand {
    /// Print the ValidatingAdmissionPolicy and binding that guard egress identities, from the
    /// config's `firewall.egress_identities.admission`, as YAML for `kubectl apply -f -`.
    Render {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
        } => printed(block_on(cli::feed::render(&config, &feed))),
        Command::Firewall {
            command: FirewallCommand::Plan { config, inventory },
        } => match block_on(cli::firewall::plan_command(&config, inventory.as_deref())) {
            Ok(report) => {
                print!("{}", report.text);
                if report.failed > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(error) => usage_error(&error),
        },
        Command::Firewall {
            command: FirewallCommand::Import(args),
        } => match cli::firewall::import_command(&args) {
            Ok(import) => {
                print!("{}", import.yaml);
                eprint!("{}", import.report);
                if import.skipped_deny {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(error) => usage_error(&error),
        },
        Command::Admission {
            command: AdmissionCommand::Render { config },
        } => printed(cli::admission::render(&config)),
        Command::Status { addr, json } => printed(block_on(cli::feed::status(&addr, json))),
        Command::Feed {
            command: FeedCommand::Normalize(args),
        } => match cli::feed::normalize_command(args) {
            Ok(summary) => {
                eprintln!("{summary}");
                ExitCode::SUCCESS
            }
            Err(error) => usage_error(&error),
        },
        Command::Enrich(args) => {
            let strict = args.strict;
            match cli::enrich::command(args) {
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
                Err(error) => usage_error(&error),
            }
        }
    }
}

/// Exit 2 with the error, for commands whose input or arguments are at fault.
fn usage_error(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(2)
}

/// Prints a command's text output, or its error.
fn printed(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => usage_error(&error),
    }
}

fn run(config_path: PathBuf, once: bool) -> ExitCode {
    let config = match Config::load_valid(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {}", telemetry::ErrorChain(&error));
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
    let options = app::Options {
        once,
        config_path: Some(config_path),
        ..app::Options::default()
    };
    let result = runtime.block_on(async {
        tokio::spawn(app::stop_on_signals(shutdown.clone()));
        app::run(config, options, shutdown).await
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

/// Runs a future to completion on a small runtime, for one-shot commands.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}
