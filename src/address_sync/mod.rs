//! Firewall address sync: pods' (or their nodes') addresses kept in step with address groups
//! on FortiGates and FortiManagers, as User-ID tags on PAN-OS firewalls (directly or through
//! Panorama) for dynamic address groups, and served as plain-text lists for firewalls that
//! pull.
//!
//! ```text
//! cluster model --changes, debounced--> publisher: Groups::compute -> Published snapshot
//!     snapshot --watch channel--> one sync loop per target (read / plan / apply, as leader)
//!     snapshot --watch channel--> pull endpoint (/v1/groups/<name>.txt)
//! ```
//!
//! [`groups`] turns the model into what each group holds; [`sync`] runs one loop per target
//! over any [`crate::firewall::Target`]; [`serve`] is the pull endpoint. A new target type is a
//! new module in `firewall` and a few lines in [`AddressSync::start`]; a new kind of group a new
//! source of [`groups::Published`] entries. A slow or failing target only holds its own loop:
//! the publisher never waits for a target, and the flow pipeline and the feeds never wait for
//! any of this.

pub mod config;
pub mod groups;
pub mod serve;
pub mod sync;
pub mod userid;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::deps::Deps;
use crate::egress::EgressSnapshot;
use crate::firewall::fortigate::{FortiGate, FortiGateSettings};
use crate::firewall::fortimanager::{FortiManager, FortiManagerSettings, Install};
use crate::firewall::panorama::objects::{StaticObjects, StaticSettings};
use crate::firewall::panorama::{Panorama, PanoramaSettings};
use crate::firewall::Credentials;
use crate::firewall::{Marker, Target, TargetError};
use crate::net::http::{redact_url, HttpSettings};
use crate::net::tls::TlsSettings;
use config::{FirewallConfig, PanoramaConfig, PanoramaMode};
use groups::{Groups, Published};
use sync::{FirewallMetrics, Runner, StatusBoard, TargetStatus};

/// The address sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("firewall.{target}")]
    Secret {
        target: String,
        #[source]
        source: crate::secret::SecretError,
    },
    #[error("firewall.{target}: {source}")]
    Target { target: String, source: TargetError },
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

impl StartError {
    pub fn kind(&self) -> &'static str {
        match self {
            StartError::Secret { source, .. } => source.kind(),
            StartError::Target { source, .. } => source.kind(),
            StartError::Serve(_) => "serve",
        }
    }
}

/// The running address sync.
#[derive(Default)]
pub struct AddressSync {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One configured target, before it runs.
pub struct Configured {
    pub name: String,
    /// `fortigate`, `fortimanager` or `panorama`.
    pub kind: &'static str,
    /// The URL, redacted for display.
    pub url: String,
    /// The groups it gets (all for `None`).
    pub groups: Option<BTreeSet<String>>,
    pub target: Box<dyn Target>,
}

fn http_settings(kind: &str, name: &str, tls: &TlsSettings, timeout_secs: u64) -> HttpSettings {
    HttpSettings::verified(format!("firewall.{kind} {name}"), tls, timeout_secs)
}

/// Every configured target, built (secrets read, clients set up) but not contacted.
pub fn targets(config: &FirewallConfig, cluster_name: &str) -> Result<Vec<Configured>, StartError> {
    let marker = Marker::new(cluster_name);
    let mut planned = Vec::new();
    for device in &config.fortigate {
        let path = format!("fortigate {}", device.name);
        let api_key = device
            .api_key
            .read(&format!("{path} api_key"))
            .map_err(|source| StartError::Secret {
                target: path.clone(),
                source,
            })?;
        let target = FortiGate::new(FortiGateSettings {
            url: device.url.clone(),
            vdom: device.vdom.clone(),
            api_key,
            http: http_settings("fortigate", &device.name, &device.tls, device.timeout_secs),
            requests_per_second: device.requests_per_second,
            group_max_members: device.group_max_members,
            marker: marker.clone(),
        })
        .map_err(|source| StartError::Target {
            target: path,
            source,
        })?;
        planned.push(Configured {
            name: device.name.clone(),
            kind: "fortigate",
            url: redact_url(&device.url),
            groups: device
                .groups
                .as_ref()
                .map(|groups| groups.iter().cloned().collect()),
            target: Box::new(target),
        });
    }
    for manager in &config.fortimanager {
        let path = format!("fortimanager {}", manager.name);
        let credentials = read_credentials(
            &path,
            manager.api_key.as_ref(),
            manager.username.as_deref(),
            manager.password.as_ref(),
        )?;
        let target = FortiManager::new(FortiManagerSettings {
            url: manager.url.clone(),
            adom: manager.adom.clone(),
            credentials,
            http: http_settings(
                "fortimanager",
                &manager.name,
                &manager.tls,
                manager.timeout_secs,
            ),
            requests_per_second: manager.requests_per_second,
            group_max_members: manager.group_max_members,
            marker: marker.clone(),
            install: manager
                .install
                .iter()
                .map(|install| Install {
                    package: install.package.clone(),
                    scope: install
                        .scope
                        .iter()
                        .map(|scope| (scope.device.clone(), scope.vdom.clone()))
                        .collect(),
                })
                .collect(),
            install_poll: Duration::from_millis(manager.install_poll_ms),
            install_timeout: Duration::from_secs(manager.install_timeout_secs),
        })
        .map_err(|source| StartError::Target {
            target: path,
            source,
        })?;
        planned.push(Configured {
            name: manager.name.clone(),
            kind: "fortimanager",
            url: redact_url(&manager.url),
            groups: manager
                .groups
                .as_ref()
                .map(|groups| groups.iter().cloned().collect()),
            target: Box::new(target),
        });
    }
    for device in config
        .panorama
        .iter()
        .filter(|device| device.mode == PanoramaMode::Static)
    {
        let client = panorama_client(device, panorama_credentials(device)?, None)?;
        let target = StaticObjects::new(
            client,
            static_settings(
                device,
                device.device_group.as_deref().unwrap_or_default(),
                cluster_name,
            ),
        );
        planned.push(Configured {
            name: device.name.clone(),
            kind: "panorama",
            url: redact_url(&device.url),
            groups: device
                .groups
                .as_ref()
                .map(|groups| groups.iter().cloned().collect()),
            target: Box::new(target),
        });
    }
    Ok(planned)
}

/// A target's credentials, read from their secrets; `path` names the target in errors.
fn read_credentials(
    path: &str,
    api_key: Option<&crate::secret::SecretSource>,
    username: Option<&str>,
    password: Option<&crate::secret::SecretSource>,
) -> Result<Credentials, StartError> {
    Credentials::read(path, api_key, username, password)
        .map_err(|source| StartError::Secret {
            target: path.to_owned(),
            source,
        })?
        .ok_or_else(|| StartError::Target {
            target: path.to_owned(),
            source: TargetError::Setup("set api_key, or username and password".into()),
        })
}

/// How a PAN-OS device's objects in `device_group` are written and committed.
fn static_settings(
    device: &PanoramaConfig,
    device_group: &str,
    cluster_name: &str,
) -> StaticSettings {
    StaticSettings {
        device_group: device_group.to_owned(),
        admin: device
            .admin
            .clone()
            .or_else(|| device.username.clone())
            .unwrap_or_default(),
        marker: Marker::new(cluster_name),
        group_max_members: device.group_max_members,
        job_poll: Duration::from_millis(device.job_poll_ms),
        job_timeout: Duration::from_secs(device.job_timeout_secs),
    }
}

/// A PAN-OS device's credentials.
fn panorama_credentials(device: &PanoramaConfig) -> Result<Credentials, StartError> {
    read_credentials(
        &format!("panorama {}", device.name),
        device.api_key.as_ref(),
        device.username.as_deref(),
        device.password.as_ref(),
    )
}

fn panorama_client(
    device: &PanoramaConfig,
    credentials: Credentials,
    target: Option<String>,
) -> Result<Panorama, StartError> {
    Panorama::new(PanoramaSettings {
        url: device.url.clone(),
        device_group: device.device_group.clone().unwrap_or_default(),
        credentials,
        http: http_settings("panorama", &device.name, &device.tls, device.timeout_secs),
        target,
        vsys: device.vsys.clone(),
        requests_per_second: device.requests_per_second,
    })
    .map_err(|source| StartError::Target {
        target: format!("panorama {}", device.name),
        source,
    })
}

/// Every configured User-ID loop (one per firewall, or per serial behind a Panorama), built
/// but not started.
fn user_id_runners(
    deps: &Deps,
    config: &FirewallConfig,
    cluster_name: &str,
    metrics: &FirewallMetrics,
    board: &StatusBoard,
) -> Result<Vec<(String, String, userid::UserIdRunner)>, StartError> {
    let mut runners = Vec::new();
    for device in config
        .panorama
        .iter()
        .filter(|device| device.mode == PanoramaMode::UserId)
    {
        let credentials = panorama_credentials(device)?;
        let serials: Vec<Option<&String>> = match device.targets.is_empty() {
            true => vec![None],
            false => device.targets.iter().map(Some).collect(),
        };
        // The dynamic address groups live in Panorama's device group: one loop (the first
        // serial's) keeps them.
        let mut dynamic_groups = match &device.device_group {
            Some(group) => Some(StaticObjects::new(
                panorama_client(device, credentials.clone(), None)?,
                static_settings(device, group, cluster_name),
            )),
            None => None,
        };
        for serial in serials {
            let name = match serial {
                Some(serial) => format!("{}.{serial}", device.name),
                None => device.name.clone(),
            };
            let client = panorama_client(device, credentials.clone(), serial.cloned())?;
            runners.push((
                name.clone(),
                redact_url(&device.url),
                userid::UserIdRunner {
                    name,
                    client,
                    groups: device
                        .groups
                        .as_ref()
                        .map(|groups| groups.iter().cloned().collect()),
                    prefix: userid::tag_prefix(cluster_name),
                    dynamic_groups: dynamic_groups.take(),
                    timeout: Duration::from_secs(device.tag_timeout_secs),
                    reconcile_interval: Duration::from_secs(config.reconcile_interval_secs),
                    leadership: deps.leadership.clone(),
                    metrics: metrics.clone(),
                    board: board.clone(),
                },
            ));
        }
    }
    Ok(runners)
}

/// Computes a new snapshot of the groups after each (debounced) change of the model, once its
/// initial lists are in.
#[allow(clippy::too_many_arguments)]
async fn publish(
    cluster: Cluster,
    groups: Groups,
    mut egress: Option<Egress>,
    debounce: Duration,
    sender: watch::Sender<Option<Arc<Published>>>,
    metrics: FirewallMetrics,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = cluster.gate().wait() => {}
    }
    // The first snapshot waits for the first resolution of egress identities too, so a
    // target's first sync does not delete their groups.
    if let Some(egress) = &mut egress {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = egress.snapshots.wait_for(Option::is_some) => {}
        }
    }
    let mut changes = cluster.changes();
    loop {
        changes.borrow_and_update();
        let mut published = groups.compute(&cluster.read());
        if let Some(egress) = &mut egress {
            if let Some(snapshot) = egress.snapshots.borrow_and_update().as_deref() {
                published.add_egress(snapshot, &egress.prefix, &egress.cluster);
            }
        }
        for (policy, reason) in &published.skipped {
            let already = sender
                .borrow()
                .as_ref()
                .is_some_and(|previous| previous.skipped.contains_key(policy));
            if !already {
                tracing::warn!(
                    policy,
                    reason,
                    "a mirrored policy's selector is not usable; it publishes no group"
                );
            }
        }
        let changed = sender.borrow().as_deref() != Some(&published);
        if changed {
            let previous = sender.borrow().as_deref().cloned().unwrap_or_default();
            metrics.groups(&previous, &published);
            sender.send_replace(Some(Arc::new(published)));
        }
        let egress_changed = async {
            match &mut egress {
                Some(egress) => {
                    if egress.snapshots.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = egress_changed => {}
        }
        // Let a burst of changes (a rollout) settle into one snapshot.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(debounce) => {}
        }
    }
}

/// The egress identities the publisher adds as groups.
pub struct Egress {
    pub snapshots: watch::Receiver<Option<Arc<EgressSnapshot>>>,
    /// The groups' name prefix (`egress.`).
    pub prefix: String,
    /// The cluster's name, for the address names.
    pub cluster: String,
}

impl AddressSync {
    /// Starts the publisher, one loop per target and the pull endpoint. With `once`, each
    /// target syncs once and [`AddressSync::join`] returns after that.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        deps: &Deps,
        config: &FirewallConfig,
        cluster_name: Option<&str>,
        cluster: &Cluster,
        egress: Option<watch::Receiver<Option<Arc<EgressSnapshot>>>>,
        metrics: &FirewallMetrics,
        board: &StatusBoard,
        once: bool,
        stop: &CancellationToken,
    ) -> Result<AddressSync, StartError> {
        let planned = targets(config, cluster_name.unwrap_or_default())?;
        let user_id = user_id_runners(
            deps,
            config,
            cluster_name.unwrap_or_default(),
            metrics,
            board,
        )?;
        {
            let mut board = board.lock();
            board.clear();
            let entries = planned
                .iter()
                .map(|target| (&target.name, target.kind, &target.url))
                .chain(user_id.iter().map(|(name, url, _)| (name, "panorama", url)));
            for (name, kind, url) in entries {
                board.insert(
                    name.clone(),
                    TargetStatus {
                        name: name.clone(),
                        kind,
                        url: url.clone(),
                        state: "pending",
                        ..TargetStatus::default()
                    },
                );
            }
        }
        let (sender, receiver) = watch::channel(None);
        let mut tasks = Vec::new();
        if let Some(serve) = config.serve.as_ref().filter(|_| !once) {
            tasks.push(serve::start(serve, receiver.clone(), stop.clone()).await?);
        }
        let publisher_stop = stop.child_token();
        let egress = egress
            .zip(config.egress_identities.as_ref())
            .map(|(snapshots, settings)| Egress {
                snapshots,
                prefix: settings.group_prefix.clone(),
                cluster: cluster_name.unwrap_or_default().to_owned(),
            });
        let publisher = tokio::spawn(publish(
            cluster.clone(),
            Groups::new(config, cluster_name.unwrap_or_default()),
            egress,
            Duration::from_millis(config.debounce_ms),
            sender,
            metrics.clone(),
            publisher_stop.clone(),
        ));
        let mut runners = Vec::new();
        for target in planned {
            metrics.init_target(&target.name);
            let runner = Runner {
                name: target.name,
                target: target.target,
                groups: target.groups,
                placeholder: config
                    .names
                    .for_cluster(cluster_name.unwrap_or_default())
                    .placeholder,
                reconcile_interval: Duration::from_secs(config.reconcile_interval_secs),
                leadership: deps.leadership.clone(),
                metrics: metrics.clone(),
                board: board.clone(),
            };
            runners.push(tokio::spawn(runner.run(
                receiver.clone(),
                once,
                stop.clone(),
            )));
        }
        for (name, _, runner) in user_id {
            metrics.init_target(&name);
            runners.push(tokio::spawn(runner.run(
                receiver.clone(),
                once,
                stop.clone(),
            )));
        }
        if once {
            // One sync each; then the publisher is no longer needed.
            tasks.push(tokio::spawn(async move {
                for runner in runners {
                    let _ = runner.await;
                }
                publisher_stop.cancel();
                let _ = publisher.await;
            }));
        } else {
            tasks.extend(runners);
            tasks.push(publisher);
        }
        Ok(AddressSync { tasks })
    }

    /// Waits for every task (after `stop`; with `once`, after each target's sync).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a firewall task failed");
            }
        }
    }
}

/// The cluster scope the address sync needs: every namespace and pod, and policies when it
/// mirrors them.
pub fn scope(config: &FirewallConfig) -> crate::cluster::WatchScope {
    crate::cluster::WatchScope {
        namespace: None,
        pods: None,
        policies: config.mirror_policies.is_some(),
    }
}
