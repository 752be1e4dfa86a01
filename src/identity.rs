//! Who this process is: its host, node, pod and namespace, read once at start from the
//! environment (the downward API sets `NODE_NAME`, `POD_NAME` and `POD_NAMESPACE`) and the
//! kernel's host name. A leaf: the stages take an [`Identity`] instead of reading the
//! environment themselves.

/// This process's names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The machine's host name, else `-`.
    pub hostname: String,
    /// `NODE_NAME`: the node this replica runs on.
    pub node_name: Option<String>,
    /// `POD_NAME`: this replica's pod.
    pub pod_name: Option<String>,
    /// `POD_NAMESPACE`: the namespace it runs in.
    pub pod_namespace: Option<String>,
}

impl Identity {
    /// Reads the names from the environment and the kernel.
    pub fn from_environment() -> Identity {
        let variable = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
        Identity {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .ok()
                .or_else(|| variable("HOSTNAME"))
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "-".to_owned()),
            node_name: variable("NODE_NAME"),
            pod_name: variable("POD_NAME"),
            pod_namespace: variable("POD_NAMESPACE"),
        }
    }

    /// This replica's name among its peers: the pod's name, else the host's.
    pub fn replica(&self) -> &str {
        self.pod_name.as_deref().unwrap_or(&self.hostname)
    }
}
