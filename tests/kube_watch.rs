//! Watch streams of the Kubernetes API double, driven by kube-runtime's own watcher: the
//! initial list, live events, bookmarks, and `410 Gone` followed by a relist. The in-cluster
//! enrichment builds on these.

mod common;

use std::time::Duration;

use common::kube_api::KubeApi;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::Api;
use serde_json::json;

fn pod(name: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"app": "web"}}, "spec": {"containers": []}, "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The next event of a watcher that is not a bare restart marker, within 10 s.
async fn next<S: futures_util::Stream<Item = watcher::Result<Event<Pod>>> + Unpin>(
    stream: &mut S,
) -> Event<Pod> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("no watch error")
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

#[tokio::test]
async fn a_watcher_lists_then_follows_changes() {
    let api = KubeApi::start().await;
    api.seed("pods", pod("a", "10.244.1.5"));
    api.seed("pods", pod("b", "10.244.1.6"));
    let pods: Api<Pod> = Api::all(api.client());
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();

    assert!(matches!(next(&mut stream).await, Event::Init));
    let mut listed = Vec::new();
    loop {
        match next(&mut stream).await {
            Event::InitApply(pod) => listed.push(name(&pod)),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    listed.sort();
    assert_eq!(listed, ["a", "b"]);

    api.seed("pods", pod("c", "10.244.1.7"));
    assert!(matches!(next(&mut stream).await, Event::Apply(pod) if name(&pod) == "c"));
    api.seed("pods", pod("a", "10.244.1.9"));
    match next(&mut stream).await {
        Event::Apply(pod) => assert_eq!(pod.status.unwrap().pod_ip.as_deref(), Some("10.244.1.9")),
        other => panic!("unexpected {other:?}"),
    }
    api.remove("pods", "shop/b");
    assert!(matches!(next(&mut stream).await, Event::Delete(pod) if name(&pod) == "b"));
}

#[tokio::test]
async fn bookmarks_arrive_when_asked_for() {
    let api = KubeApi::start().await;
    api.seed("pods", pod("a", "10.244.1.5"));
    api.set_watch_timing(Duration::from_millis(50), Duration::from_secs(1));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = reqwest::get(format!(
        "{}/api/v1/pods?watch=true&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=1",
        api.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let kinds: Vec<String> = body
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        kinds.iter().filter(|kind| *kind == "BOOKMARK").count() >= 3,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_compacted_history_answers_410_and_the_watcher_relists() {
    let api = KubeApi::start().await;
    api.seed("pods", pod("a", "10.244.1.5"));
    // Watches end after half a second, so the watcher has to resume from its last version.
    api.set_watch_timing(Duration::from_secs(60), Duration::from_millis(500));
    let pods: Api<Pod> = Api::all(api.client());
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    assert!(matches!(next(&mut stream).await, Event::Init));
    assert!(matches!(next(&mut stream).await, Event::InitApply(_)));
    assert!(matches!(next(&mut stream).await, Event::InitDone));

    // Changes the watcher missed, then the history it would resume from is gone.
    api.seed("pods", pod("b", "10.244.1.6"));
    api.compact();
    api.remove("pods", "shop/a");
    api.compact();
    // The resumed watch gets 410 Gone; the watcher relists and sees the state as it is now.
    let mut relisted = Vec::new();
    let mut saw_init = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("events in time")
            .expect("the stream goes on")
        {
            Ok(Event::Init) => saw_init = true,
            Ok(Event::InitApply(pod)) if saw_init => relisted.push(name(&pod)),
            Ok(Event::InitDone) if saw_init => break,
            Ok(_) => {}
            // kube reports the 410 before it relists; the stream carries on.
            Err(_) => {}
        }
    }
    assert_eq!(relisted, ["b"]);
}
