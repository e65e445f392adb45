//! `martmap run --once` against a bare rdkafka consumer reading the same
//! topic from the same broker: messages/s of each and their ratio (the
//! broker's own speed varies by machine, so only the ratio means anything).
//!
//! Run by `scripts/bench-kafka`, which starts tansu (and PostgreSQL), makes
//! the events and sets:
//! - `MARTMAP_BENCH_KAFKA_BOOTSTRAP`: the broker;
//! - `MARTMAP_BENCH_EVENTS`: a JSON Lines file of events;
//! - `MARTMAP_BENCH_POSTGRES_URL` (optional): a PostgreSQL database URL
//!   prefix (`postgres://user@host:port`) to measure as well as SQLite.
//!
//! Under `cargo test` (no `--bench` argument) it runs once, as a smoke test,
//! over the committed sample on the broker of `scripts/test`
//! (`MARTMAP_TEST_KAFKA_BOOTSTRAP`), into SQLite only.
//!
//! martmap runs twice per target: as is, and with `enable-cobrowse` in
//! `[agg-feature]`, keeping `AGT_COBROWSE_AGENT_*` exact in every batch.
//!
//! Both sides join a consumer group and read every partition to its end,
//! timed from start to finish: martmap as a whole process (start-up, catalog,
//! database writes and commits included), the bare consumer in process.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 3;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench-kafka"))
}

fn main() {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let (bootstrap, events, rounds) = if bench {
        let events = std::fs::read(env("MARTMAP_BENCH_EVENTS")).expect("events file");
        (env("MARTMAP_BENCH_KAFKA_BOOTSTRAP"), events, 3)
    } else {
        let sample = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/samples/cobrowse-sessions.jsonl"
        );
        let events = std::fs::read(sample).expect("the sample");
        (env("MARTMAP_TEST_KAFKA_BOOTSTRAP"), events, 1)
    };
    let lines: Vec<&[u8]> = events
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    let topic = format!("bench-{}", std::process::id());
    produce(&bootstrap, &topic, &lines);
    println!(
        "topic {topic}: {} messages, {:.1} MB, {PARTITIONS} partitions",
        lines.len(),
        events.len() as f64 / 1e6
    );

    let mut targets = vec![("SQLite", None, false), ("SQLite, aggregates", None, true)];
    if let (true, Ok(prefix)) = (bench, std::env::var("MARTMAP_BENCH_POSTGRES_URL")) {
        targets.push(("PostgreSQL", Some(prefix.clone()), false));
        targets.push(("PostgreSQL, aggregates", Some(prefix), true));
    }
    let mut bare = Vec::new();
    let mut martmap: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    // Rounds alternate, so that a slow moment of the broker hits both sides.
    for round in 0..rounds {
        bare.push(bare_consumer(&bootstrap, &topic, lines.len(), round));
        for (at, (_, postgres, aggregates)) in targets.iter().enumerate() {
            let group = format!("{topic}-martmap-{round}-{at}");
            let seconds = martmap_run_once(
                &bootstrap,
                &topic,
                &group,
                lines.len(),
                postgres,
                *aggregates,
            );
            martmap[at].push(seconds);
        }
    }
    let rate = |seconds: f64| lines.len() as f64 / seconds;
    let best = |times: &[f64]| times.iter().copied().fold(f64::INFINITY, f64::min);
    let bare_best = best(&bare);
    println!(
        "bare rdkafka consumer:          {:>8.0} messages/s (best of {rounds})",
        rate(bare_best)
    );
    for ((name, _, _), times) in targets.iter().zip(&martmap) {
        let time = best(times);
        println!(
            "martmap run --once into {name:<22} {:>8.0} messages/s  ratio {:.2}",
            rate(time),
            bare_best / time
        );
    }
}

fn produce(bootstrap: &str, topic: &str, lines: &[&[u8]]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let created = runtime
        .block_on(admin.create_topics(
            [&NewTopic::new(
                topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        ))
        .expect("create topic");
    for result in created {
        result.expect("topic created");
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    for (at, line) in lines.iter().enumerate() {
        let key = at.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(*line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(_), returned)) => {
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
                Err((error, _)) => panic!("produce: {error}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// Seconds a plain consumer takes to read every partition to its end.
fn bare_consumer(bootstrap: &str, topic: &str, expected: usize, round: usize) -> f64 {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-bare-{round}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut count, mut bytes) = (0usize, 0usize);
    let mut ended = HashSet::new();
    while ended.len() < PARTITIONS as usize || count < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                count += 1;
                bytes += message.payload().map_or(0, <[u8]>::len);
                ended.remove(&message.partition());
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => eprintln!("bare consumer: {error}"),
            None => {}
        }
    }
    assert_eq!(count, expected, "the bare consumer read every message once");
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64()
}

/// Seconds `martmap run --once` takes, as a whole process, into a new
/// database whose tables exist (as in `scripts/bench-load`).
fn martmap_run_once(
    bootstrap: &str,
    topic: &str,
    group: &str,
    expected: usize,
    postgres: &Option<String>,
    aggregates: bool,
) -> f64 {
    let dir = tempfile::tempdir().expect("temporary directory");
    let database = match postgres {
        Some(prefix) => {
            let name = format!("bench_{}", group.replace('-', "_"));
            let status = Command::new("psql")
                .args(["-X", "-q", &format!("{prefix}/postgres")])
                .args(["-c", &format!("CREATE DATABASE {name}")])
                .status()
                .expect("psql runs");
            assert!(status.success(), "create database {name}");
            format!("{prefix}/{name}")
        }
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let options = dir.path().join("bench.ini");
    std::fs::write(
        &options,
        format!(
            "[kafka-bench]\nbootstrap.servers={bootstrap}\ngroup.id={group}\ng:topic:{topic}=COBROWSE\n{}",
            if aggregates { "\n[agg-feature]\nenable-cobrowse\n" } else { "" }
        ),
    )
    .expect("options file");
    let martmap = env!("CARGO_BIN_EXE_martmap");
    let root = env!("CARGO_MANIFEST_DIR");
    let init = Command::new(martmap)
        .args(["init-db", "--database-url", &database])
        .current_dir(root)
        .output()
        .expect("init-db runs");
    assert!(init.status.success(), "{init:?}");
    // The calendar and the aggregate tables too, as an earlier cycle leaves
    // them: the timing is of one cycle's loading.
    let setup = Command::new(martmap)
        .args(["aggregate", "--options"])
        .arg(&options)
        .args(["--database-url", &database])
        .current_dir(root)
        .output()
        .expect("martmap aggregate runs");
    assert!(setup.status.success(), "{setup:?}");
    let started = Instant::now();
    let output = Command::new(martmap)
        .args(["run", "--once", "--options"])
        .arg(&options)
        .args(["--database-url", &database])
        .current_dir(root)
        .output()
        .expect("martmap runs");
    let seconds = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("consumed {expected} messages")),
        "martmap consumed every message once: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    seconds
}
