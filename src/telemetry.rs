//! Telemetry: logging setup, the metrics registry, and the HTTP listener serving `/metrics`,
//! `/healthz`, `/readyz` and `/status` (feed status as JSON).
//!
//! Stages register their own metrics under a prefix; this module only serves them. It never
//! touches records.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// Logs, metrics and health.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json` logs, on standard error.
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `threatflow=debug`; the `RUST_LOG` environment
    /// variable overrides it.
    pub log_level: String,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`. Unset: no listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            listen_addr: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl TelemetryConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            problems.push(
                format!("{path}.log_level"),
                format!(
                    "`{}` is not a log filter (try `info` or `threatflow=debug`)",
                    self.log_level
                ),
            );
        }
    }
}

/// Starts logging to standard error. `RUST_LOG` overrides the configured level.
pub fn init_logging(config: &TelemetryConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, never in shipped logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// An error and its sources, `outer: inner: innermost`: the one way errors are rendered in
/// logs, status and messages.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(inner) = source {
            write!(f, ": {inner}")?;
            source = inner.source();
        }
        Ok(())
    }
}

/// A time as `/status` shows it: RFC 3339, whole seconds, UTC.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Registers a metric family and creates the series of `zero` at zero, so that "none yet"
/// reads as 0 rather than as missing.
pub fn family<L, M>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    zero: impl IntoIterator<Item = L>,
) -> Family<L, M>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: Default + EncodeMetric + TypedMetric + std::fmt::Debug + Send + Sync + 'static,
    Family<L, M>: Metric,
{
    let family = Family::<L, M>::default();
    for labels in zero {
        drop(family.get_or_create(&labels));
    }
    registry.register(name, help, family.clone());
    family
}

/// Registers a single metric (a counter or gauge without labels).
pub fn metric<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Whether the process is ready to take traffic, and if not, what it waits for.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// What is not ready yet -> why.
    waiting: Arc<Mutex<BTreeMap<&'static str, String>>>,
    /// What an operator should know that does not stop readiness (a refused config reload).
    notes: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        let readiness = Readiness {
            waiting: Arc::default(),
            notes: Arc::default(),
        };
        readiness.wait_for("pipeline", "starting");
        readiness
    }
}

impl Readiness {
    /// The pipeline is running (or, with `false`, stopping).
    pub fn set_ready(&self, ready: bool) {
        match ready {
            true => self.done("pipeline"),
            false => self.wait_for("pipeline", "stopping"),
        }
    }

    /// Not ready until `part` is done, because of `reason`.
    pub fn wait_for(&self, part: &'static str, reason: impl Into<String>) {
        self.waiting.lock().insert(part, reason.into());
    }

    pub fn done(&self, part: &'static str) {
        self.waiting.lock().remove(part);
    }

    pub fn is_ready(&self) -> bool {
        self.waiting.lock().is_empty()
    }

    /// Shows `note` with the readiness answer, without making the process unready.
    pub fn note(&self, part: &'static str, note: impl Into<String>) {
        self.notes.lock().insert(part, note.into());
    }

    pub fn clear_note(&self, part: &'static str) {
        self.notes.lock().remove(part);
    }

    /// `part: note; ...`, or `None`.
    pub fn notes(&self) -> Option<String> {
        describe(&self.notes)
    }

    /// `part: reason; ...` for everything not ready, or `None` when ready.
    pub fn waiting_for(&self) -> Option<String> {
        describe(&self.waiting)
    }
}

/// `part: text; ...` for every entry, or `None` for none.
fn describe(parts: &Mutex<BTreeMap<&'static str, String>>) -> Option<String> {
    let parts = parts.lock();
    (!parts.is_empty()).then(|| {
        parts
            .iter()
            .map(|(part, text)| format!("{part}: {text}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Produces the JSON served on `/status`.
pub type StatusSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the telemetry endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
    status: StatusSource,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                                Err(error) => {
                    // Such errors (out of file descriptors) persist for a while: pause rather
                    // than spin.
                    tracing::warn!(%error, "telemetry listener failed to accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (registry, readiness, status) = (registry.clone(), readiness.clone(), status.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let response = respond(request.uri().path(), &registry, &readiness, &status);
            async move { Ok::<_, Infallible>(response) }
        });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(
    path: &str,
    registry: &Registry,
    readiness: &Readiness,
    status: &StatusSource,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "cannot encode metrics\n".into(),
                ),
            }
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/status" => (StatusCode::OK, "application/json", status()),
        "/readyz" => {
            let notes = readiness
                .notes()
                .map(|notes| format!(" ({notes})"))
                .unwrap_or_default();
            match readiness.waiting_for() {
                None => (StatusCode::OK, "text/plain", format!("ready{notes}\n")),
                Some(waiting) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {waiting}{notes}\n"),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /status\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response is valid")
}
