//! The `threatflow` binary: parses the command line, loads config, starts logging and hands
//! over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use threatflow::app::{self, RunOptions};
use threatflow::cli;
use threatflow::config::{Config, OutputFormat};
use threatflow::enrich::{EndpointIndex, Inventory};
use threatflow::flow::FlowFormat;
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
    /// Print the JSON Schema of the config file.
    Schema,
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct EnrichArgs {
    /// The collector format of the input.
    #[arg(long, value_enum, default_value = "calico")]
    input_format: InputFormat,
    /// A `kubectl get pods,services,namespaces,nodes -A -o json` file.
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
}

#[derive(Clone, Copy, ValueEnum)]
enum InputFormat {
    Calico,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormatArg {
    Cef,
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
        Command::Enrich(args) => {
            let strict = args.strict;
            match enrich(args) {
                Ok(summary) => {
                    eprintln!("{summary}");
                    if strict && summary.rejected.total() > 0 {
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
        app::run(config, RunOptions { once }, shutdown).await
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
            tracing::error!(error = ?error, "stopped");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
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
        config.cluster_name = args.cluster_name;
    }
    let index = match &args.inventory {
        Some(path) => EndpointIndex::from_inventory(&Inventory::load(path)?),
        None => EndpointIndex::default(),
    };
    if args.max_line_bytes == 0 {
        anyhow::bail!("--max-line-bytes must be at least 1");
    }
    let options = cli::enrich::EnrichOptions {
        format: match args.input_format {
            InputFormat::Calico => FlowFormat::Calico,
        },
        output: match args.output_format {
            OutputFormatArg::Cef => OutputFormat::Cef,
            OutputFormatArg::Json => OutputFormat::Json,
        },
        max_line_bytes: args.max_line_bytes,
        config: &config,
        index,
        show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let summary = cli::enrich::run(
        options,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    )?;
    Ok(summary)
}
