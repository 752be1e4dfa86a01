//! Threat feeds: reading published IP lists and turning them into the minimal, guarded set of
//! CIDRs a deny policy can use.
//!
//! `format` parses a feed's content (pure), [`crate::netset`] does the set arithmetic (pure), and
//! `normalize` applies the guards. Fetching feeds over HTTP and publishing them to the cluster
//! build on these and live elsewhere.

pub mod config;
pub mod fetch;
pub mod format;
pub mod isdb;
pub mod normalize;
pub mod render;
pub mod source;
pub mod stix;
pub mod sync;
pub mod taxii;

use tokio_util::sync::CancellationToken;

use crate::deps::Deps;
use crate::enrich::ThreatMatcher;
use config::{FeedConfig, FeedMode, FeedSettings, PublishKind};
use sync::{FeedMetrics, FeedRunner, SetupError, StatusBoard};

/// A run's feeds, each keeping itself in sync on its own schedule.
pub struct Feeds {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Feeds {
    /// No feeds.
    pub fn none() -> Feeds {
        Feeds { tasks: Vec::new() }
    }

    /// Starts every feed: each syncs now, then every period until `stop` (with `once`, just
    /// once). The set in force goes to `threats`; outcomes to `board` and `metrics`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        deps: &Deps,
        feeds: &[FeedConfig],
        settings: &FeedSettings,
        threats: &ThreatMatcher,
        metrics: &FeedMetrics,
        board: &StatusBoard,
        once: bool,
        stop: &CancellationToken,
    ) -> Result<Feeds, SetupError> {
        board
            .lock()
            .retain(|name, _| feeds.iter().any(|feed| feed.name == *name));
        if feeds.is_empty() {
            return Ok(Feeds::none());
        }
        let fetcher = sync::fetcher(settings)?;
        let publishes_to_kubernetes = feeds.iter().any(|feed| feed.mode == FeedMode::Enforce)
            && settings
                .publish
                .as_ref()
                .is_some_and(|publish| publish.kind == PublishKind::Kubernetes);
        let kubernetes = match publishes_to_kubernetes {
            true => Some(deps.kube("feed_settings.publish (type kubernetes)").await?),
            false => None,
        };
        let mut tasks = Vec::new();
        for feed in feeds {
            let runner = FeedRunner::new(
                feed.clone(),
                settings,
                fetcher.clone(),
                kubernetes.clone(),
                Some(threats.clone()),
                metrics.clone(),
                board.clone(),
            )?
            .with_leadership(deps.leadership.clone());
            tasks.push(tokio::spawn(runner.run(once, stop.clone())));
        }
        Ok(Feeds { tasks })
    }

    /// Waits until every feed has stopped (after `stop`, or, with `once`, after its sync).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a feed task failed");
            }
        }
    }
}
