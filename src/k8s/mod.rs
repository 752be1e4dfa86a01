//! What threatflow knows of Kubernetes beyond the cluster model: Calico's wire types
//! ([`calico`]), the one apply path for the objects threatflow owns ([`apply`]), and leader
//! election ([`leader`]). No business logic: which objects to write is decided by the stages
//! (feeds, policy import); how they are written, and that nothing else is touched, here.

pub mod apply;
pub mod calico;
pub mod leader;
