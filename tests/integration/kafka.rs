//! `martmap run` against a real Kafka-protocol broker: the `tansu` broker
//! that `scripts/test` starts (`MARTMAP_TEST_KAFKA_BOOTSTRAP`). Without it
//! these tests fail; they never skip. Each test uses topics of its own.

use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::database::{
    FACTS_BY_NATURAL_VALUES, SAMPLE, assert_success, block_on, load, query, sqlite_database,
};
use crate::repository;

fn bootstrap() -> String {
    std::env::var("MARTMAP_TEST_KAFKA_BOOTSTRAP").expect(
        "these tests need a Kafka-protocol broker: run scripts/test, which starts tansu \
         and sets MARTMAP_TEST_KAFKA_BOOTSTRAP",
    )
}

/// Creates `topic` with `partitions` partitions and produces every line of
/// `file` to it, keyed by the event's id when it has one.
fn produce(topic: &str, partitions: i32, file: &str) -> usize {
    let bootstrap = bootstrap();
    block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin client");
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let created = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .expect("create topics");
        for result in created {
            result.expect("topic created");
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let text = std::fs::read(repository().join(file)).expect("events");
        let mut sent = 0;
        for line in text.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let key = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|event| {
                    event
                        .get("id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| format!("line-{sent}"));
            let record = FutureRecord::to(topic).key(&key).payload(line);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("produced");
            sent += 1;
        }
        sent
    })
}

/// An options file binding `topic` to the co-browse mapping.
fn options_file(dir: &std::path::Path, topic: &str, group: &str) -> String {
    let path = dir.join("infomart.ini");
    let text = format!(
        "[kafka-test]\nbootstrap.servers={}\ngroup.id={group}\ng:topic:{topic}=COBROWSE\n",
        bootstrap()
    );
    std::fs::write(&path, text).expect("options file");
    path.display().to_string()
}

fn run_once(options: &str, database: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "run",
            "--once",
            "--options",
            options,
            "--database-url",
            database,
        ])
        .current_dir(repository())
        .output()
        .expect("martmap runs")
}

#[test]
fn run_once_loads_what_load_loads_and_stores_offsets() {
    let topic = format!("cobrowse-once-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE);
    let (dir, consumed) = sqlite_database();
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    let output = run_once(&options, &consumed);
    assert_success(&output);

    let (_other, loaded) = sqlite_database();
    assert_success(&load(&loaded, &[SAMPLE]));
    let from_kafka = query(&consumed, FACTS_BY_NATURAL_VALUES);
    assert_eq!(from_kafka.len(), 6185, "fact rows of the sample");
    assert!(
        from_kafka == query(&loaded, FACTS_BY_NATURAL_VALUES),
        "run --once and load disagree"
    );

    let offsets = query(
        &consumed,
        "SELECT CAST(SUM(next_offset) AS TEXT) FROM ctl_kafka_offset",
    );
    assert_eq!(
        offsets[0][0].as_deref(),
        Some(produced.to_string().as_str()),
        "offsets reach each partition's end"
    );
    let discards = query(
        &consumed,
        "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_discard WHERE kafka_partition IS NOT NULL",
    );
    assert_eq!(discards[0][0].as_deref(), Some("5"));

    // A second cycle finds nothing new and changes nothing.
    let again = run_once(&options, &consumed);
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("consumed 0 messages"),
        "{:?}",
        again
    );
}

#[test]
fn print_options_shows_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("infomart.ini");
    std::fs::write(
        &path,
        "[kafka-secure]\nbootstrap.servers=broker:9093\ng:topic:t=COBROWSE\nsecurity.protocol=SASL_SSL\n\
         sasl.mechanisms=SCRAM-SHA-512\nsasl.username=infomart\nsasl.password=s3cret\nssl.ca.location=/etc/ca.pem\n",
    )
    .expect("options file");
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "run",
            "--print-options",
            "--options",
            path.to_str().expect("path"),
        ])
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in [
        "[kafka-secure]",
        "group.id=martmap",
        "security.protocol=SASL_SSL",
        "sasl.mechanisms=SCRAM-SHA-512",
        "sasl.username=infomart",
        "sasl.password=[redacted]",
        "ssl.ca.location=/etc/ca.pem",
        "enable.auto.commit=false",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("s3cret"));
}
