//! Changing the configuration without a restart: the config file is polled (a ConfigMap's
//! kubelet swaps a symlink, so content is compared, not modification times). A valid change is
//! handed to the daemon, which drains the running pipeline and starts the new one; the
//! process-lifetime parts (metrics, the telemetry listener, the Lease, unchanged cluster
//! watches) stay. An invalid change is refused: logged with every problem, counted, and noted
//! on `/readyz`, while the running configuration goes on.

use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry::{ErrorChain, Readiness};

/// How often a daemon looks at its config file.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Config reloads by outcome: `applied`, `refused`.
pub type ReloadCounter = Family<OutcomeLabels, Counter>;

/// Watches one config file.
pub struct ConfigWatch {
    pub path: PathBuf,
    pub interval: Duration,
    pub reloads: ReloadCounter,
    pub readiness: Readiness,
}

impl ConfigWatch {
    /// Polls the file until `stop`. Each valid change that differs from what runs is sent on
    /// `changes` (and becomes what runs); invalid ones are refused.
    pub async fn run(
        self,
        mut running: Config,
        changes: mpsc::Sender<Config>,
        stop: CancellationToken,
    ) {
        let outcome = |outcome| self.reloads.get_or_create(&OutcomeLabels { outcome }).inc();
        let mut last = tokio::fs::read(&self.path).await.ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => return,
            }
            let Ok(current) = tokio::fs::read(&self.path).await else {
                continue;
            };
            if last.as_ref() == Some(&current) {
                continue;
            }
            let parsed = Config::parse_valid(&self.path, &String::from_utf8_lossy(&current));
            last = Some(current);
            match parsed {
                Ok(config) if config == running => self.readiness.clear_note("config"),
                Ok(config) => {
                    tracing::info!(path = %self.path.display(), "the config file changed; draining the running pipeline to apply it");
                    self.readiness.clear_note("config");
                    outcome("applied");
                    running = config.clone();
                    if changes.send(config).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    outcome("refused");
                    let message = ErrorChain(&error).to_string();
                    tracing::error!(path = %self.path.display(), error = %message, "the changed config file is invalid; refused, the running config stays");
                    self.readiness.note(
                        "config",
                        format!(
                            "a change to {} was refused, the running config stays: {}",
                            self.path.display(),
                            message.replace('\n', " ")
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "sources: [{name: in, type: stdin}]\nsinks: [{name: out, type: stdout}]\n";

    #[tokio::test(start_paused = true)]
    async fn valid_changes_are_handed_on_and_invalid_ones_refused_and_noted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("threatflow.yaml");
        std::fs::write(&path, VALID).unwrap();
        let (reloads, readiness) = (ReloadCounter::default(), Readiness::default());
        let watch = ConfigWatch {
            path: path.clone(),
            interval: CHECK_INTERVAL,
            reloads: reloads.clone(),
            readiness: readiness.clone(),
        };
        let running = Config::from_yaml(VALID).unwrap();
        let (sender, mut changes) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch.run(running, sender, stop.clone()));
        let count = |outcome| reloads.get_or_create(&OutcomeLabels { outcome }).get();
        let checks = |n: u32| tokio::time::sleep(CHECK_INTERVAL * n + Duration::from_millis(1));

        // The same configuration, written differently: nothing to do.
        std::fs::write(&path, format!("# a comment\n{VALID}")).unwrap();
        checks(2).await;
        assert!(changes.try_recv().is_err());
        assert_eq!((count("applied"), count("refused")), (0, 0));

        std::fs::write(&path, "sources: [{name: in, type: stdin}]\nsinks: []\n").unwrap();
        checks(1).await;
        assert_eq!(count("refused"), 1);
        let note = readiness.notes().unwrap();
        assert!(
            note.contains("was refused") && note.contains("sinks"),
            "{note}"
        );
        assert!(changes.try_recv().is_err(), "nothing invalid is applied");

        let changed = VALID.replace("name: out", "name: console");
        std::fs::write(&path, &changed).unwrap();
        checks(1).await;
        let applied = changes.recv().await.unwrap();
        assert_eq!(applied.sinks[0].name, "console");
        assert_eq!(count("applied"), 1);
        assert_eq!(
            readiness.notes(),
            None,
            "the note goes once a valid config runs"
        );

        stop.cancel();
        task.await.unwrap();
    }
}
