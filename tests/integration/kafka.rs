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
    FACTS_BY_NATURAL_VALUES, OUT_OF_RANGE, SAMPLE, assert_out_of_range_discarded, assert_success,
    block_on, init_db, load, postgres_database, query, sqlite_database,
};
use crate::{repository, terminate, wait_until};

pub fn bootstrap() -> String {
    std::env::var("MARTMAP_TEST_KAFKA_BOOTSTRAP").expect(
        "these tests need a Kafka-protocol broker: run scripts/test, which starts tansu \
         and sets MARTMAP_TEST_KAFKA_BOOTSTRAP",
    )
}

/// The sample's lines, each one message.
pub fn sample_lines() -> Vec<Vec<u8>> {
    std::fs::read(repository().join(SAMPLE))
        .expect("sample")
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// tansu built with its SQLite storage engine, which keeps the log and
/// SCRAM users in a file and answers ListOffsets exactly (`scripts/test`
/// installs it and runs the shared broker with it too).
pub fn tansu() -> String {
    std::env::var("MARTMAP_TEST_TANSU_SCRAM").expect(
        "this test needs tansu built with its SQLite storage engine: run scripts/test, \
         which installs it (cargo install tansu --features dynostore,libsql) and sets \
         MARTMAP_TEST_TANSU_SCRAM",
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A tansu broker of a test's own on `port`, killed on drop. It keeps its
/// log in memory, or with `dir` in an SQLite file there (so, like a Kafka
/// broker, it comes back with its log when started again there, and it
/// applies retention when it starts).
pub struct Broker {
    child: std::process::Child,
    pub bootstrap: String,
}

impl Broker {
    pub fn start(port: u16, dir: Option<&std::path::Path>) -> Broker {
        let listener = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu());
        match dir {
            Some(dir) => {
                command
                    .current_dir(dir)
                    .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            }
            None => command.args(["broker", "--storage-engine", "memory://tansu/"]),
        };
        let child = command
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        let bootstrap = format!("127.0.0.1:{port}");
        wait_until("tansu listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&bootstrap).is_ok()
        });
        Broker { child, bootstrap }
    }

    /// Kills the broker as a crash would.
    pub fn kill(mut self) {
        self.child.kill().expect("kill tansu");
        self.child.wait().expect("tansu reaped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates `topic` with `partitions` partitions on the shared broker and
/// produces every line of `file` to it.
pub fn produce(topic: &str, partitions: i32, file: &str) -> usize {
    let text = std::fs::read(repository().join(file)).expect("events");
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    let client = client(&bootstrap(), &[]);
    create_topic(&client, topic, partitions);
    send_lines(&client, topic, &lines)
}

/// A client configuration for the broker at `bootstrap`.
pub fn client(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config
}

pub fn create_topic(client: &ClientConfig, topic: &str, partitions: i32) {
    create_topic_with(client, topic, partitions, &[]);
}

/// [`create_topic`] with topic configuration entries.
pub fn create_topic_with(
    client: &ClientConfig,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    block_on(async {
        let admin: AdminClient<DefaultClientContext> = client.create().expect("admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (key, value) in configs {
            new = new.set(key, value);
        }
        let created = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .expect("create topics");
        for result in created {
            result.expect("topic created");
        }
    });
    await_partitions(client, topic, partitions);
}

/// Waits until the broker's metadata shows `topic` with all its partitions:
/// creating a topic completes asynchronously (with Kafka as with tansu),
/// and a producer that sees fewer partitions fails its messages.
fn await_partitions(client: &ClientConfig, topic: &str, partitions: i32) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client.create().expect("metadata client");
    wait_until("the topic's partitions", Duration::from_secs(30), || {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|metadata| {
                metadata.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                })
            })
    });
}

/// Produces `lines` to `topic`, each keyed by the event's id when it has one.
pub fn send_lines(client: &ClientConfig, topic: &str, lines: &[&[u8]]) -> usize {
    send_lines_at(client, topic, lines, None)
}

/// [`send_lines`], with `timestamp` (epoch milliseconds) as the messages'
/// create time when given.
pub fn send_lines_at(
    client: &ClientConfig,
    topic: &str,
    lines: &[&[u8]],
    timestamp: Option<i64>,
) -> usize {
    block_on(async {
        let producer: FutureProducer = client
            .clone()
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let mut sent = 0;
        for line in lines {
            let key = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|event| {
                    event
                        .get("id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| format!("line-{sent}"));
            let mut record = FutureRecord::to(topic).key(&key).payload(*line);
            if let Some(timestamp) = timestamp {
                record = record.timestamp(timestamp);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("produced");
            sent += 1;
        }
        sent
    })
}

/// An options file binding `topic` to the co-browse mapping. A short
/// session timeout lets the group notice a killed member quickly.
pub fn options_file(dir: &std::path::Path, topic: &str, group: &str) -> String {
    options_file_for(&bootstrap(), "", dir, topic, group)
}

/// [`options_file`] for the broker at `bootstrap`, with `extra` lines.
pub fn options_file_for(
    bootstrap: &str,
    extra: &str,
    dir: &std::path::Path,
    topic: &str,
    group: &str,
) -> String {
    let path = dir.join("infomart.ini");
    let text = format!(
        "[kafka-test]\nbootstrap.servers={bootstrap}\ngroup.id={group}\ng:topic:{topic}=COBROWSE\nsession.timeout.ms=6000\n{extra}"
    );
    std::fs::write(&path, text).expect("options file");
    path.display().to_string()
}

pub fn run_once(options: &str, database: &str) -> std::process::Output {
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

/// `run --once` over the sample in 3 partitions gives the tables `load`
/// gives, stores each partition's end, and a second cycle changes nothing.
fn run_once_loads_what_load_loads(consumed: &str, loaded: &str, name: &str) {
    let topic = format!("cobrowse-{name}-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE);
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    let output = run_once(&options, consumed);
    assert_success(&output);

    assert_success(&load(loaded, &[SAMPLE]));
    let from_kafka = query(consumed, FACTS_BY_NATURAL_VALUES);
    assert_eq!(from_kafka.len(), 6185, "fact rows of the sample");
    assert!(
        from_kafka == query(loaded, FACTS_BY_NATURAL_VALUES),
        "run --once and load disagree"
    );

    let offsets = query(
        consumed,
        "SELECT CAST(SUM(next_offset) AS TEXT) FROM ctl_kafka_offset",
    );
    assert_eq!(
        offsets[0][0].as_deref(),
        Some(produced.to_string().as_str()),
        "offsets reach each partition's end"
    );
    // Each malformed message is kept with topic, partition, offset and key.
    let discards = query(
        consumed,
        &format!(
            "SELECT CAST(COUNT(DISTINCT CAST(kafka_partition AS TEXT) || '/' || CAST(position AS TEXT)) AS TEXT) \
             FROM ctl_discard WHERE source = '{topic}' AND kafka_partition IS NOT NULL AND message_key IS NOT NULL"
        ),
    );
    assert_eq!(discards[0][0].as_deref(), Some("5"));

    // A second cycle finds nothing new and changes nothing.
    let again = run_once(&options, consumed);
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("consumed 0 messages"),
        "{:?}",
        again
    );

    // The database is the truth for progress: a new database loads the
    // whole topic, though the group has committed its end to Kafka.
    let (_fresh_dir, fresh) = sqlite_database();
    assert_success(&run_once(&options, &fresh));
    assert_eq!(query(&fresh, FACTS_BY_NATURAL_VALUES), from_kafka);
}

#[test]
fn run_once_loads_what_load_loads_into_sqlite() {
    let ((_consumed_dir, consumed), (_loaded_dir, loaded)) = (sqlite_database(), sqlite_database());
    run_once_loads_what_load_loads(&consumed, &loaded, "once-sqlite");
}

#[test]
fn run_once_loads_what_load_loads_into_postgres() {
    run_once_loads_what_load_loads(
        &postgres_database("kafka_once_consumed"),
        &postgres_database("kafka_once_loaded"),
        "once-postgres",
    );
}

/// `martmap run --print-options` with `section` as the options file.
fn print_options(section: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("infomart.ini");
    std::fs::write(&path, section).expect("options file");
    Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["run", "--print-options", "--options"])
        .arg(&path)
        .current_dir(repository())
        .output()
        .expect("martmap runs")
}

#[test]
fn print_options_shows_the_effective_configuration_without_secrets() {
    let output = print_options(
        "[kafka-secure]\nbootstrap.servers=broker:9093\ng:topic:t=COBROWSE\nsecurity.protocol=SASL_SSL\n\
         sasl.mechanisms=SCRAM-SHA-512\nsasl.username=infomart\nsasl.password=s3cret\nssl.ca.location=/etc/ca.pem\n",
    );
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // As read back from librdkafka, which normalises enumerations.
    for line in [
        "[kafka-secure]",
        "group.id=martmap",
        "security.protocol=sasl_ssl",
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

#[test]
fn a_client_option_librdkafka_rejects_names_section_and_option() {
    let output = print_options(
        "[kafka-secure]\nbootstrap.servers=broker:9093\ng:topic:t=COBROWSE\nsecurity.protocol=TLS\n",
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("[kafka-secure]")
            && stderr.contains("security.protocol")
            && stderr.contains("TLS"),
        "{stderr}"
    );
}

/// The sample's rows are all there, and every produced message is counted
/// in exactly one committed batch, its discards stored once.
pub fn assert_loaded_exactly_once(database: &str, produced: i64) {
    assert_eq!(
        messages_committed(database),
        produced,
        "every message in exactly one committed batch"
    );
    assert_eq!(query(database, FACTS_BY_NATURAL_VALUES).len(), 6185);
    let discards = query(database, "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_discard");
    assert_eq!(discards[0][0].as_deref(), Some("5"), "no discard twice");
}

/// [`messages_committed`], or `None` before `run` has created the tables.
fn committed_so_far(database: &str) -> Option<i64> {
    use sea_orm::{ConnectionTrait, Statement};
    block_on(async {
        let db = sea_orm::Database::connect(database).await.ok()?;
        let sql = "SELECT CAST(COALESCE(SUM(event_count + discard_count), 0) AS BIGINT) FROM ctl_audit_log";
        let row = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .ok()??;
        row.try_get_by_index::<i64>(0).ok()
    })
}

/// Messages accounted for by committed batches: each message is counted in
/// exactly one batch's audit row, as loaded or as discarded.
pub fn messages_committed(database: &str) -> i64 {
    let rows = query(
        database,
        "SELECT CAST(COALESCE(SUM(event_count + discard_count), 0) AS TEXT) FROM ctl_audit_log",
    );
    rows[0][0]
        .as_deref()
        .expect("a sum")
        .parse()
        .expect("a number")
}

pub fn spawn_run(options: &str, database: &str, once: bool) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_martmap"));
    command.args([
        "run",
        "--options",
        options,
        "--database-url",
        database,
        "--batch-size",
        "40",
    ]);
    if once {
        command.arg("--once");
    }
    command
        .current_dir(repository())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("martmap starts")
}

#[test]
fn killed_at_any_batch_resumes_without_loss_or_duplicates() {
    let topic = format!("cobrowse-kill-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE) as i64;
    let (dir, database) = sqlite_database();
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    init_db(&database);
    // Kill -9 after 3, then 10, then 20 committed batches; then finish.
    for batches in [3, 10, 20] {
        let mut child = spawn_run(&options, &database, false);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let committed = query(
                &database,
                "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_audit_log",
            );
            let committed: usize = committed
                .first()
                .and_then(|r| r[0].as_deref())
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            if committed >= batches {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {committed} batches committed in 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
    assert_success(&run_once(&options, &database));
    assert_loaded_exactly_once(&database, produced);
    let offsets = query(
        &database,
        "SELECT CAST(SUM(next_offset) AS TEXT) FROM ctl_kafka_offset",
    );
    assert_eq!(
        offsets[0][0].as_deref(),
        Some(produced.to_string().as_str())
    );
}

#[test]
fn two_processes_in_one_group_load_everything_once() {
    let topic = format!("cobrowse-pair-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE) as i64;
    let (dir, database) = sqlite_database();
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    init_db(&database);
    let members = [
        spawn_run(&options, &database, false),
        spawn_run(&options, &database, false),
    ];
    wait_until("every message committed", Duration::from_secs(120), || {
        messages_committed(&database) >= produced
    });
    for member in members {
        terminate(&member);
        assert_success(&finish_within(member, Duration::from_secs(60)));
    }
    assert_loaded_exactly_once(&database, produced);
}

/// Waits for `child` to exit and returns its output; fails the test (after
/// killing it) when it runs longer than `limit`.
pub fn finish_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let id = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let waiter = std::thread::spawn(move || {
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let out = read(stdout.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let err = read(stderr.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let status = child.wait().expect("reaped");
        let _ = done.send(());
        std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    });
    if finished.recv_timeout(limit).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &id.to_string()])
            .status();
        let output = waiter.join().expect("waiter");
        panic!(
            "martmap did not finish within {limit:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    waiter.join().expect("waiter")
}

/// An options file as a user writes it: only the broker, the group and
/// the binding, every client option at its default.
fn plain_options_file(dir: &std::path::Path, topic: &str) -> String {
    let path = dir.join("plain.ini");
    let text = format!(
        "[kafka-test]\nbootstrap.servers={}\ngroup.id=group-{topic}\ng:topic:{topic}=COBROWSE\n",
        bootstrap()
    );
    std::fs::write(&path, text).expect("options file");
    path.display().to_string()
}

/// Continuous members killed with SIGKILL stay in the group until their
/// session times out (45 s by default); an ETL cycle does not wait for them.
#[test]
fn run_once_after_killed_members_finishes_with_default_options() {
    let topic = format!("cobrowse-crashed-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE) as i64;
    let (dir, database) = sqlite_database();
    let options = plain_options_file(dir.path(), &topic);
    // The defect's reproduction: kills at fixed times, whatever was loaded.
    for millis in [500, 1500, 2500] {
        let mut member = spawn_run(&options, &database, false);
        std::thread::sleep(Duration::from_millis(millis));
        member.kill().expect("kill -9");
        member.wait().expect("reaped");
    }
    let cycle = spawn_run(&options, &database, true);
    assert_success(&finish_within(cycle, Duration::from_secs(60)));
    assert_loaded_exactly_once(&database, produced);
}

/// Two ETL cycles started at once (a scheduler starting one while the
/// last still runs): the later waits for the earlier; both succeed and
/// every message is loaded once.
fn overlapping_cycles_neither_duplicate_nor_fail(database: &str, name: &str) {
    let topic = format!("cobrowse-overlap-{name}-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE) as i64;
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = plain_options_file(dir.path(), &topic);
    let cycles = [
        spawn_run(&options, database, true),
        spawn_run(&options, database, true),
    ];
    for cycle in cycles {
        assert_success(&finish_within(cycle, Duration::from_secs(60)));
    }
    assert_loaded_exactly_once(database, produced);
}

#[test]
fn overlapping_once_cycles_into_sqlite() {
    let (_dir, database) = sqlite_database();
    overlapping_cycles_neither_duplicate_nor_fail(&database, "sqlite");
}

#[test]
fn overlapping_once_cycles_into_postgres() {
    overlapping_cycles_neither_duplicate_nor_fail(&postgres_database("overlap"), "postgres");
}

/// What `run` writes to standard error in `seconds` with `section` as its
/// options file (and `extra` arguments); then it is killed.
pub fn stderr_of_run(section: &str, seconds: u64, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = dir.path().join("infomart.ini");
    std::fs::write(&options, section).expect("options");
    let database = format!("sqlite://{}", dir.path().join("martmap.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["run", "--options", options.to_str().expect("path")])
        .args(["--database-url", &database])
        .args(extra)
        .current_dir(repository())
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("martmap starts");
    std::thread::sleep(Duration::from_secs(seconds));
    child.kill().expect("stop martmap");
    let output = child.wait_with_output().expect("martmap stops");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What `run` writes to standard error in 3 s with an unreachable broker
/// (port 1 on loopback: nothing listens there).
fn stderr_while_the_broker_is_unreachable(extra: &[&str]) -> String {
    stderr_of_run(
        "[kafka-down]\nbootstrap.servers=127.0.0.1:1\ng:topic:t=COBROWSE\n",
        3,
        extra,
    )
}

#[test]
fn an_unreachable_broker_is_reported_once_with_message_id_55_20049() {
    let stderr = stderr_while_the_broker_is_unreachable(&[]);
    assert_logged_once(&stderr, "55-20049 Kafka exception");
}

/// Exactly one line of `stderr` contains `sign`: an outage is reported once.
pub fn assert_logged_once(stderr: &str, sign: &str) {
    let lines = stderr.lines().filter(|line| line.contains(sign)).count();
    assert_eq!(lines, 1, "one line with `{sign}` expected, got:\n{stderr}");
}

#[test]
fn json_logs_carry_the_message_id_as_a_field() {
    let stderr = stderr_while_the_broker_is_unreachable(&["--log-format", "json"]);
    let records: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let alarms: Vec<&serde_json::Value> = records
        .iter()
        .filter(|record| record["fields"]["message_id"] == "55-20049")
        .collect();
    assert_eq!(alarms.len(), 1, "{stderr}");
    assert_eq!(alarms[0]["level"], "ERROR");
}

#[test]
fn sigterm_finishes_the_batch_commits_and_exits_cleanly() {
    let topic = format!("cobrowse-term-{}", std::process::id());
    let produced = produce(&topic, 3, SAMPLE) as i64;
    let (dir, database) = sqlite_database();
    init_db(&database);
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    let child = spawn_run(&options, &database, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while messages_committed(&database) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing committed in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&child);
    let output = child.wait_with_output().expect("martmap stops");
    assert_success(&output);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("consumed"),
        "{output:?}"
    );
    assert_success(&run_once(&options, &database));
    assert_loaded_exactly_once(&database, produced);
}

/// One HTTP GET on loopback: the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics server");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of one sample line of a Prometheus text exposition.
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[test]
fn metrics_count_what_is_committed_and_health_says_ok() {
    let topic = format!("cobrowse-metrics-{}", std::process::id());
    // Every event carries an attribute the mapping does not read (drift).
    let (dir, database) = sqlite_database();
    let drifted = dir.path().join("drifted.jsonl");
    let text = std::fs::read_to_string(repository().join(SAMPLE)).expect("sample");
    let lines: Vec<String> = text
        .lines()
        .map(
            |line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(mut event)) => {
                    event.insert("channel".into(), "web".into());
                    serde_json::Value::Object(event).to_string()
                }
                _ => line.to_owned(),
            },
        )
        .collect();
    std::fs::write(&drifted, lines.join("\n")).expect("drifted sample");
    let produced = produce(&topic, 3, drifted.to_str().expect("path")) as f64;
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["run", "--options", &options, "--database-url", &database])
        .args(["--batch-size", "100", "--metrics-addr", &addr])
        .current_dir(repository())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("martmap starts");

    // Counters move with commits; lag is sampled every second.
    let label = format!("{{topic=\"{topic}\"}}");
    let lag = |text: &str, partition: i32| {
        sample_value(
            text,
            &format!("martmap_consumer_lag{{topic=\"{topic}\",partition=\"{partition}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::net::TcpStream::connect(&addr)
            .ok()
            .map(|_| http_get(&addr, "/metrics").1)
            .unwrap_or_default();
        let done = sample_value(&text, &format!("martmap_messages_total{label}")) == Some(produced)
            && (0..3).all(|partition| lag(&text, partition) == Some(0.0));
        if done {
            break text;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("metrics did not reach the end of the topic in 60 s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let batches: f64 = query(
        &database,
        "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_audit_log",
    )[0][0]
        .as_deref()
        .expect("a count")
        .parse()
        .expect("a number");
    assert_eq!(
        sample_value(&text, &format!("martmap_discards_total{label}")),
        Some(5.0)
    );
    assert_eq!(
        sample_value(&text, &format!("martmap_batches_total{label}")),
        Some(batches)
    );
    assert_eq!(
        sample_value(
            &text,
            &format!("martmap_batch_duration_seconds_count{label}")
        ),
        Some(batches)
    );
    assert_eq!(sample_value(&text, "martmap_database_down"), Some(0.0));
    // One loaded event in 64 is sampled, the first included.
    let sampled = ((produced - 5.0) / 64.0).ceil();
    assert_eq!(
        sample_value(
            &text,
            &format!(
                "martmap_unread_attribute_events_total{{topic=\"{topic}\",path=\"$.channel\"}}"
            )
        ),
        Some(sampled),
        "{text}"
    );
    let (status, body) = http_get(&addr, "/health");
    assert!(status.contains("200"), "{status}: {body}");
    assert_eq!(body, "ok\n");
    child.kill().expect("stop martmap");
    child.wait().expect("reaped");
}

/// A message whose value does not fit its column is discarded and the
/// cycle goes on: one bad message never poisons the topic.
fn run_discards_values_that_do_not_fit(database: &str, name: &str) {
    let topic = format!("out-of-range-{name}-{}", std::process::id());
    produce(&topic, 1, OUT_OF_RANGE);
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    assert_success(&run_once(&options, database));
    assert_out_of_range_discarded(database);
    let offsets = query(
        database,
        "SELECT CAST(next_offset AS TEXT) FROM ctl_kafka_offset",
    );
    assert_eq!(offsets, [[Some("6".to_owned())]], "past every message");
}

#[test]
fn run_discards_values_that_do_not_fit_into_sqlite() {
    let (_dir, database) = sqlite_database();
    run_discards_values_that_do_not_fit(&database, "sqlite");
}

#[test]
fn run_discards_values_that_do_not_fit_into_postgres() {
    run_discards_values_that_do_not_fit(&postgres_database("kafka_out_of_range"), "postgres");
}

/// `run` reports what is wrong with its configuration as `validate-mapping
/// --options` does: a diagnostic with its line, and exit code 1.
#[test]
fn run_reports_binding_problems_as_diagnostics() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let check = |name: &str, section: &str, code: &str, says: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, section).expect("options file");
        let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
            .args(["run", "--once", "--options"])
            .arg(&path)
            .current_dir(repository())
            .env("NO_COLOR", "1")
            .output()
            .expect("martmap runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(code) && stderr.contains(says), "{stderr}");
    };
    check(
        "unknown.ini",
        "[kafka-test]\nbootstrap.servers=127.0.0.1:1\ng:topic:t=COBROWS\n",
        "martmap::options::unknown_mapping",
        "did you mean `COBROWSE`?",
    );
    check(
        "zone.ini",
        "[kafka-test]\nbootstrap.servers=127.0.0.1:1\ng:topic:t=COBROWSE\n[date-time]\ndate-time-tz=Mars/Olympus\n",
        "martmap::options::unknown_time_zone",
        "zone.ini:5:",
    );
    check(
        "none.ini",
        "[kafka-test]\nbootstrap.servers=127.0.0.1:1\n",
        "martmap::options::no_bindings",
        "g:topic:<topic>=<MAPPING>",
    );
}

/// A running `run` takes a changed configuration at the next batch
/// boundary, without a restart: a second topic bound (to the agent
/// mapping) and a changed mapping both take effect, nothing is lost or
/// loaded twice; an invalid edit is reported once (MM-10002) and the
/// running configuration keeps loading.
#[test]
fn run_reloads_a_changed_configuration_without_a_restart() {
    let id = std::process::id();
    let (sessions, agents) = (
        format!("cobrowse-reload-{id}"),
        format!("agents-reload-{id}"),
    );
    let text = std::fs::read_to_string(repository().join(SAMPLE)).expect("sample");
    let lines: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
    let (first, second) = lines.split_at(600);
    let client = client(&bootstrap(), &[]);
    create_topic(&client, &sessions, 3);
    create_topic(&client, &agents, 1);
    send_lines(&client, &sessions, first);

    let dir = tempfile::tempdir().expect("temporary directory");
    let mappings = dir.path().join("mappings");
    std::fs::create_dir(&mappings).unwrap();
    for name in ["COBROWSE.yaml", "IXN_AGENT.yaml"] {
        std::fs::copy(
            repository().join("mappings").join(name),
            mappings.join(name),
        )
        .unwrap();
    }
    let options = dir.path().join("infomart.ini");
    let section = format!(
        "[kafka-test]\nbootstrap.servers={}\ngroup.id=group-{sessions}\ng:topic:{sessions}=COBROWSE\n",
        bootstrap()
    );
    std::fs::write(&options, &section).unwrap();
    let (_db_dir, database) = sqlite_database();
    let child = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "run",
            "--options",
            options.to_str().unwrap(),
            "--database-url",
            &database,
        ])
        .args(["--mappings", mappings.to_str().unwrap()])
        .current_dir(repository())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("martmap starts");
    let committed = |count: i64| {
        wait_until(
            &format!("{count} messages committed"),
            Duration::from_secs(90),
            || committed_so_far(&database) == Some(count),
        )
    };
    committed(600);

    // A second binding and a changed mapping, while it runs.
    std::fs::write(&options, format!("{section}g:topic:{agents}=IXN_AGENT\n")).unwrap();
    let cobrowse = mappings.join("COBROWSE.yaml");
    let changed = std::fs::read_to_string(&cobrowse).unwrap().replacen(
        "description: ",
        "description: (reloaded) ",
        1,
    );
    std::fs::write(&cobrowse, changed).unwrap();
    send_lines(&client, &sessions, second);
    let handlings =
        std::fs::read_to_string(repository().join("samples/agent-handlings.jsonl")).unwrap();
    let handlings: Vec<&[u8]> = handlings.lines().map(str::as_bytes).collect();
    send_lines(&client, &agents, &handlings);
    let all = (lines.len() + handlings.len()) as i64;
    committed(all);

    // An invalid edit: reported, and the running configuration keeps loading.
    std::fs::write(
        &options,
        format!("{section}g:topic:{agents}=NO_SUCH_MAPPING\n"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The last lines again: each session's last version stays its last.
    send_lines(&client, &sessions, &lines[lines.len() - 100..]);
    committed(all + 100);
    terminate(&child);
    let output = finish_within(child, Duration::from_secs(60));
    assert_success(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_logged_once(&stderr, "MM-10001 configuration reloaded");
    assert_logged_once(&stderr, "MM-10002 configuration not reloaded");

    // Exactly what loading the same events gives.
    let (_reference_dir, reference) = sqlite_database();
    assert_success(&load(&reference, &[SAMPLE]));
    let (facts, expected) = (
        query(&database, FACTS_BY_NATURAL_VALUES),
        query(&reference, FACTS_BY_NATURAL_VALUES),
    );
    let first = facts.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        facts.len() == expected.len() && first.is_none(),
        "{} rows, expected {}; first difference: {:?}",
        facts.len(),
        expected.len(),
        first.map(|at| (&facts[at], &expected[at]))
    );
    let agents_loaded = query(&database, "SELECT CAST(COUNT(*) AS TEXT) FROM ixn_agent");
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "load",
            "--database-url",
            &reference,
            "--mapping",
            "mappings/IXN_AGENT.yaml",
        ])
        .arg("samples/agent-handlings.jsonl")
        .current_dir(repository())
        .output()
        .expect("load runs");
    assert_success(&output);
    assert_eq!(
        agents_loaded,
        query(&reference, "SELECT CAST(COUNT(*) AS TEXT) FROM ixn_agent")
    );
    // The batches after the reload used the changed mapping, and say so.
    let hashes = query(
        &database,
        "SELECT CAST(COUNT(DISTINCT mapping_hash) AS TEXT) FROM ctl_audit_log WHERE mapping_name = 'COBROWSE'",
    );
    assert_eq!(hashes[0][0].as_deref(), Some("2"));
}

/// The rows of CTL_KAFKA_GAP and the stored next offsets of `topic`.
fn gaps_and_offsets(database: &str, topic: &str) -> (Vec<String>, Vec<String>) {
    let gaps = query(
        database,
        &format!(
            "SELECT CAST(kafka_partition AS TEXT), CAST(from_offset AS TEXT), \
             CAST(to_offset AS TEXT), kind FROM ctl_kafka_gap WHERE topic = '{topic}'"
        ),
    );
    let offsets = query(
        database,
        &format!(
            "SELECT CAST(kafka_partition AS TEXT), CAST(next_offset AS TEXT) \
             FROM ctl_kafka_offset WHERE topic = '{topic}' ORDER BY kafka_partition"
        ),
    );
    let line = |row: Vec<Option<String>>| {
        row.into_iter()
            .map(Option::unwrap_or_default)
            .collect::<Vec<_>>()
            .join(" ")
    };
    (
        gaps.into_iter().map(line).collect(),
        offsets.into_iter().map(line).collect(),
    )
}

/// The facts `load` makes of `lines`, for comparison.
fn facts_loaded_from(lines: &[&[u8]]) -> Vec<Vec<Option<String>>> {
    let (dir, database) = sqlite_database();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join(&b'\n')).expect("events file");
    assert_success(&load(&database, &[file.to_str().expect("path")]));
    query(&database, FACTS_BY_NATURAL_VALUES)
}

/// Retention deleted messages before `run` loaded them: the range is
/// recorded once in CTL_KAFKA_GAP (with MM-20001), and the rest loads.
/// tansu's SQLite engine applies a topic's `retention.ms` to its messages'
/// timestamps when it starts, so the deleted messages are produced with
/// timestamps two hours old and the broker started again.
#[test]
fn run_records_a_retention_gap_once_and_loads_the_rest() {
    let lines = sample_lines();
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let (loaded, rest) = lines.split_at(100);
    let (deleted, kept) = rest.split_at(200);
    let old = chrono::Utc::now().timestamp_millis() - 2 * 3600 * 1000;

    let (port, log) = (
        free_port(),
        tempfile::tempdir().expect("the broker's directory"),
    );
    let broker = Broker::start(port, Some(log.path()));
    let topic = "cobrowse-retention";
    let kafka = client(&broker.bootstrap, &[]);
    let retention = [("cleanup.policy", "delete"), ("retention.ms", "3600000")];
    create_topic_with(&kafka, topic, 1, &retention);
    send_lines_at(&kafka, topic, loaded, Some(old));
    let (dir, database) = sqlite_database();
    let options = options_file_for(&broker.bootstrap, "", dir.path(), topic, "group-retention");
    assert_success(&run_once(&options, &database));
    assert_eq!(gaps_and_offsets(&database, topic).1, ["0 100"]);

    send_lines_at(&kafka, topic, deleted, Some(old));
    send_lines_at(&kafka, topic, kept, None);
    broker.kill();
    let broker = Broker::start(port, Some(log.path()));
    wait_until(
        "retention deletes the old messages",
        Duration::from_secs(30),
        || earliest_offset(&broker.bootstrap, topic) == Some(300),
    );

    let first = run_once(&options, &database);
    assert_success(&first);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_logged_once(&stderr, "MM-20001");
    assert!(
        stderr.contains("offsets 100 to 299 of partition 0 of cobrowse-retention were deleted"),
        "{stderr}"
    );
    let end = format!("0 {}", lines.len());
    assert_eq!(
        gaps_and_offsets(&database, topic),
        (vec!["0 100 300 retention".to_owned()], vec![end.clone()])
    );
    let expected = facts_loaded_from(&[loaded, kept].concat());
    assert_eq!(query(&database, FACTS_BY_NATURAL_VALUES), expected);

    // Recorded once: the next cycle finds nothing new.
    let again = run_once(&options, &database);
    assert_success(&again);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("MM-20001"));
    assert_eq!(gaps_and_offsets(&database, topic).0.len(), 1);
    drop(broker);
}

/// The broker's earliest offset of partition 0 of `topic`.
fn earliest_offset(bootstrap: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client(bootstrap, &[]).create().ok()?;
    let (low, _) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(5))
        .ok()?;
    Some(low)
}
