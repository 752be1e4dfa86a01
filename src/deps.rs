//! What every stage may use, built once per process by `app` and kept across config reloads:
//! who this process is, its readiness, whether it leads, the clock, and the one Kubernetes
//! client (made on first use, so a run that never talks to the API never needs credentials).
//!
//! A leaf below the stages: it knows no stage. Tests hand in their own client (the API double's)
//! and clock through [`Deps::with_kube`] and [`Deps::with_clock`].

use std::sync::Arc;

use crate::clock::{SharedClock, SystemClock};
use crate::identity::Identity;
use crate::k8s::leader::Leadership;
use crate::telemetry::Readiness;

/// The process-lifetime dependencies of the stages.
#[derive(Clone)]
pub struct Deps {
    pub identity: Identity,
    pub readiness: Readiness,
    /// Whether this replica writes to the cluster and to firewalls.
    pub leadership: Leadership,
    pub clock: SharedClock,
    kube: Arc<tokio::sync::OnceCell<kube::Client>>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("identity", &self.identity)
            .field("leader", &self.leadership.is_leader())
            .finish_non_exhaustive()
    }
}

/// No Kubernetes API could be reached.
#[derive(Debug, thiserror::Error)]
#[error(
    "{needed_by} needs the Kubernetes API: run in a pod with a service account, or set KUBECONFIG"
)]
pub struct KubeUnavailable {
    pub needed_by: &'static str,
    #[source]
    pub source: kube::Error,
}

impl Deps {
    /// Dependencies read from this process's environment; without leader election (this
    /// replica always leads) until [`Deps::with_leadership`].
    pub fn from_environment(readiness: Readiness) -> Deps {
        Deps {
            identity: Identity::from_environment(),
            readiness,
            leadership: Leadership::always(),
            clock: Arc::new(SystemClock),
            kube: Arc::default(),
        }
    }

    /// Uses `client` instead of in-cluster credentials or `KUBECONFIG`.
    pub fn with_kube(self, client: kube::Client) -> Deps {
        Deps {
            kube: Arc::new(tokio::sync::OnceCell::new_with(Some(client))),
            ..self
        }
    }

    pub fn with_clock(self, clock: SharedClock) -> Deps {
        Deps { clock, ..self }
    }

    pub fn with_leadership(self, leadership: Leadership) -> Deps {
        Deps { leadership, ..self }
    }

    /// The Kubernetes client, made on first use; `needed_by` names the setting that needs it
    /// in the error.
    pub async fn kube(&self, needed_by: &'static str) -> Result<kube::Client, KubeUnavailable> {
        crate::net::tls::install_provider();
        self.kube
            .get_or_try_init(kube::Client::try_default)
            .await
            .cloned()
            .map_err(|source| KubeUnavailable { needed_by, source })
    }
}
