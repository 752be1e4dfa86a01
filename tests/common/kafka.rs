//! A real Kafka-protocol broker for the tests: tansu, in memory, on a loopback port of its
//! own, with topics created through its CLI and records produced and offsets read through
//! librdkafka (the same client threatflow uses).
//!
//! Records are produced one per record batch: tansu 0.6 answers a fetch that starts inside
//! a batch (after a consumer paused, or resumed from a commit mid-batch) with nothing, where
//! Kafka returns the batch. With one record per batch every offset starts a batch.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The tansu binary: on PATH, else where `cargo install` puts it (tests/run.sh installs it).
fn tansu() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|path| path.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path
        .or_else(|| cargo_home.map(|home| home.join("bin/tansu")))
        .filter(|path| path.is_file())
        .expect("tansu is not installed: run the tests with `bash tests/run.sh`, which installs it")
}

/// A running broker; killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    /// With TLS: the CA file clients trust, and the TLS port clients use.
    tls: Option<(PathBuf, u16)>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_advertising(None)
    }

    /// A broker reachable only over TLS, with a certificate for `localhost` and 127.0.0.1
    /// from the test CA written into `dir`. (tansu 0.6 does not serve TLS itself, so a TLS
    /// terminator in front of it does, and the broker advertises the terminator.)
    pub fn start_tls(dir: &std::path::Path) -> Broker {
        super::pki::make(dir);
        let port = free_port();
        let mut broker = Broker::start_advertising(Some(port));
        let acceptor = tokio_rustls::TlsAcceptor::from(super::pki::server_config(dir));
        let upstream = broker.port;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let Ok(mut plain) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    });
                }
            });
        });
        broker.tls = Some((dir.join("ca.pem"), port));
        broker
    }

    fn start_advertising(advertised: Option<u16>) -> Broker {
        let tansu = tansu();
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let url = format!("tcp://127.0.0.1:{port}");
            let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
            let child = Command::new(&tansu)
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &advertised])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tansu");
            let mut broker = Broker {
                child,
                port,
                tls: None,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return broker;
                }
                if broker.child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = broker.child.kill();
        }
        panic!("tansu did not start");
    }

    /// Where clients connect (the TLS port, for a TLS broker).
    pub fn address(&self) -> String {
        match &self.tls {
            Some((_, port)) => format!("127.0.0.1:{port}"),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu())
            .args(["topic", "create", name])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create {name}");
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.address());
        if let Some((ca, _)) = &self.tls {
            config
                .set("security.protocol", "SSL")
                .set("ssl.ca.location", ca.display().to_string());
        }
        config
    }

    /// Produces `values` to `topic`, spread over its partitions round-robin (or all to
    /// `partition`), one record per batch, and waits until the broker has them.
    pub fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        partitions: i32,
        values: &[Vec<u8>],
    ) {
        self.produce_with(topic, partition, partitions, values, "1");
    }

    /// Like [`Broker::produce`], in batches of up to 10,000 records (the producer's default):
    /// faster to read, for consumers that never resume mid-batch (see above).
    pub fn produce_batched(&self, topic: &str, partitions: i32, values: &[Vec<u8>]) {
        self.produce_with(topic, None, partitions, values, "10000");
    }

    fn produce_with(
        &self,
        topic: &str,
        partition: Option<i32>,
        partitions: i32,
        values: &[Vec<u8>],
        batch_records: &str,
    ) {
        let producer: BaseProducer = self
            .client()
            .set("linger.ms", "5")
            .set("batch.num.messages", batch_records)
            // Compressed, as producers commonly write: the consumer must decompress.
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        for (i, value) in values.iter().enumerate() {
            let partition = partition.unwrap_or(i as i32 % partitions);
            let mut record = BaseRecord::<(), [u8]>::to(topic)
                .payload(value.as_slice())
                .partition(partition);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, returned)) => {
                        producer.poll(Duration::from_millis(10));
                        record = returned;
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }

    /// Produces one message without a value (a tombstone) to `partition` of `topic`.
    pub fn produce_tombstone(&self, topic: &str, partition: i32) {
        let producer: BaseProducer = self.client().create().unwrap();
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .key(b"gone".as_slice())
                    .partition(partition),
            )
            .map_err(|(error, _)| error)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// The offsets `group` has committed for `topic`'s partitions (-1 where none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.client().set("group.id", group).create().unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap();
        (0..partitions)
            .map(|partition| {
                committed
                    .find_partition(topic, partition)
                    .and_then(|element| element.offset().to_raw())
                    .filter(|&offset| offset >= 0)
                    .unwrap_or(-1)
            })
            .collect()
    }

    /// Every value in `topic`'s partitions, read from the beginning (without a group).
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", "threatflow-test-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut records = Vec::new();
        let mut ended = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while ended < partitions && Instant::now() < deadline {
            use rdkafka::message::Message;
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => records.push((
                    message.key().map(<[u8]>::to_vec),
                    message.payload().unwrap_or_default().to_vec(),
                )),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
                Some(Err(error)) => panic!("reading {topic}: {error}"),
                None => {}
            }
        }
        records
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
