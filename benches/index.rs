//! The endpoint index at cluster scale: 100k pods (two IPs each for a quarter of them: dual
//! stack) in 100 namespaces on 500 nodes, and 20k services. Prints the heap bytes per pod that
//! the index alone holds (offline) and that the cluster model and index hold together (what the
//! daemon keeps while it watches), measured by a counting allocator; then criterion measures
//! lookups. Run with `cargo bench --bench index`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use threatflow::cluster::objects::{NamespaceInfo, NodeInfo, PodInfo, ServiceInfo};
use threatflow::cluster::{Inventory, Model, WatchScope};
use threatflow::enrich::{EndpointIndex, EndpointProjection, LabelFilter, SharedIndex};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// Counting the heap needs a global allocator, which only `unsafe` can implement.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PODS: u32 = 100_000;

fn pod_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i))
}

fn inventory() -> Inventory {
    let labels = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let pods = (0..PODS)
        .map(|i| {
            let deployment = format!("app-{}", i / 10);
            let mut ips = vec![pod_ip(i)];
            if i % 4 == 0 {
                ips.push(IpAddr::V6(Ipv6Addr::from(
                    0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
                )));
            }
            PodInfo {
                uid: format!("{i:08x}-5f0e-4c1a-9b7d-3e2f1a0c9d8b"),
                created_ms: Some(1_700_000_000_000),
                name: format!("{deployment}-7d9f8c6b5d-{i:05x}"),
                namespace: format!("ns-{}", i % 100),
                labels: labels(&[
                    ("app", deployment.clone()),
                    ("pod-template-hash", "7d9f8c6b5d".into()),
                ]),
                node: Some(format!("node-{}", i % 500)),
                owner: Some(("ReplicaSet".into(), format!("{deployment}-7d9f8c6b5d"))),
                ips,
                ..PodInfo::default()
            }
        })
        .collect();
    let services = (0..20_000u32)
        .map(|i| ServiceInfo {
            name: format!("svc-{i}"),
            namespace: format!("ns-{}", i % 100),
            ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))],
            selector: labels(&[("app", format!("app-{}", i * 5))]),
        })
        .collect();
    let nodes = (0..500u32)
        .map(|i| NodeInfo {
            name: format!("node-{i}"),
            labels: BTreeMap::new(),
            internal_ips: vec![IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + i))],
            created_ms: Some(1_700_000_000_000),
        })
        .collect();
    let namespaces = (0..100)
        .map(|i| NamespaceInfo {
            name: format!("ns-{i}"),
            labels: labels(&[("team", format!("team-{i}"))]),
            annotations: Default::default(),
        })
        .collect();
    Inventory {
        pods,
        services,
        nodes,
        namespaces,
        jobs: Vec::new(),
        policies: Vec::new(),
    }
}

fn index(c: &mut Criterion) {
    let inventory = inventory();
    // Label strings: two `key=value` entries per pod in the index (24 bytes each; short ones
    // are inline), and in the model the two keys and values (`app`, `app-N`,
    // `pod-template-hash`, `7d9f8c6b5d`: 3 + 7 + 17 + 10 bytes).
    let index_label_bytes = PODS as isize * 2 * 24;
    let model_label_bytes = PODS as isize * (3 + 7 + 17 + 10);
    let per_pod = |bytes: isize| bytes / PODS as isize;

    let before = ALLOCATED.load(Ordering::Relaxed);
    let index = EndpointIndex::from_inventory(&inventory);
    let index_bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    println!(
        "index for {PODS} pods and 20000 services: {:.1} MiB heap, {} bytes per pod ({} without label strings)",
        index_bytes as f64 / (1024.0 * 1024.0),
        per_pod(index_bytes),
        per_pod(index_bytes - index_label_bytes)
    );
    let before = ALLOCATED.load(Ordering::Relaxed);
    let projection = EndpointProjection::new(
        LabelFilter::default(),
        SharedIndex::default(),
        WatchScope::default(),
    );
    let model = Model::from_inventory(&inventory, vec![Box::new(projection)]);
    let model_bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    println!(
        "cluster model + index (the daemon): {:.1} MiB heap, {} bytes per pod ({} without label strings)",
        model_bytes as f64 / (1024.0 * 1024.0),
        per_pod(model_bytes),
        per_pod(model_bytes - index_label_bytes - model_label_bytes)
    );
    drop(model);

    let probes: Vec<IpAddr> = (0..1_000_000u32)
        .map(|i| pod_ip((i.wrapping_mul(2_654_435_761)) % (PODS * 11 / 10)))
        .collect();
    let mut group = c.benchmark_group("endpoint_index");
    group.throughput(Throughput::Elements(probes.len() as u64));
    group.bench_function("lookup (91% hits)", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter(|&&ip| index.endpoint(ip, 1_764_230_700_000).is_some())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, index);
criterion_main!(benches);
