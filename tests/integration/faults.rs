//! `martmap run` when what it depends on fails: the broker goes away and
//! comes back (a tansu broker of the test's own, so the shared one stays up),
//! the database goes away and comes back, and security options that the
//! broker cannot honour.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};

use crate::database::{block_on, init_db, postgres_database, postgres_server, sqlite_database};
use crate::kafka::{
    Broker, assert_loaded_exactly_once, assert_logged_once, bootstrap, client, create_topic,
    free_port, messages_committed, options_file, options_file_for, sample_lines, send_lines,
    spawn_run, stderr_of_run,
};

/// A `martmap run` in the background whose standard error is read as it
/// comes (a full pipe would stall it).
struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn start(options: &str, database: &str) -> Running {
        let mut child = spawn_run(options, database, false);
        let mut pipe = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            text
        });
        Running { child, stderr }
    }

    /// Waits until `done` holds; after `limit`, kills martmap and fails the
    /// test with what it logged.
    fn wait_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let logged = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
                panic!(
                    "{what}: not within {limit:?}; martmap logged:\n{}",
                    logged.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("martmap's status").is_none()
    }

    /// Stops martmap with SIGTERM; asserts a clean exit and returns its log.
    fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("martmap stops");
        let stderr = self.stderr.join().expect("stderr read");
        assert!(exit.success(), "martmap failed ({exit}):\n{stderr}");
        stderr
    }
}

#[test]
fn a_restarted_broker_is_reported_once_and_the_rest_loads() {
    let port = free_port();
    let broker = Broker::start(port, None);
    let topic = "cobrowse-restart";
    let lines = sample_lines();
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let (first, rest) = lines.split_at(1000);
    let kafka = client(&broker.bootstrap, &[]);
    create_topic(&kafka, topic, 3);
    send_lines(&kafka, topic, first);

    let (dir, database) = sqlite_database();
    init_db(&database);
    let options = options_file_for(&broker.bootstrap, "", dir.path(), topic, "group-restart");
    let mut run = Running::start(&options, &database);
    run.wait_until("the first part loads", Duration::from_secs(60), || {
        messages_committed(&database) == first.len() as i64
    });

    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    // A Kafka broker comes back with its log; tansu keeps it in memory and
    // comes back empty. Give it back the log it had (the first part again,
    // same keys in the same order, so the same partitions and offsets),
    // then produce the rest, which martmap must read from its stored offsets.
    let broker = Broker::start(port, None);
    let kafka = client(&broker.bootstrap, &[]);
    create_topic(&kafka, topic, 3);
    send_lines(&kafka, topic, first);
    send_lines(&kafka, topic, rest);
    run.wait_until("the rest loads", Duration::from_secs(120), || {
        messages_committed(&database) == lines.len() as i64
    });

    let stderr = run.terminate();
    assert_logged_once(&stderr, "55-20049 Kafka exception");
    assert!(
        stderr.contains("Kafka connection restored"),
        "recovery is logged:\n{stderr}"
    );
    assert_loaded_exactly_once(&database, lines.len() as i64);
    drop(broker);
}

/// Runs SQL as the PostgreSQL superuser, outside any test database.
fn as_admin(sql: &str) {
    block_on(async {
        let admin = Database::connect(&postgres_server())
            .await
            .expect("connect to PostgreSQL");
        admin.execute_unprepared(sql).await.expect(sql);
    });
}

#[test]
fn losing_the_database_pauses_consumption_and_resumes_without_loss() {
    let topic = format!("cobrowse-dbloss-{}", std::process::id());
    let lines = sample_lines();
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let (first, rest) = lines.split_at(600);
    let kafka = client(&bootstrap(), &[]);
    create_topic(&kafka, &topic, 3);
    send_lines(&kafka, &topic, first);
    let database = postgres_database("kafka_db_loss");
    let name = database.rsplit('/').next().expect("a database name");
    init_db(&database);
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = options_file(dir.path(), &topic, &format!("group-{topic}"));
    let mut run = Running::start(&options, &database);
    run.wait_until("the first part loads", Duration::from_secs(60), || {
        messages_committed(&database) == first.len() as i64
    });

    // The database goes away: new connections are refused, open ones end.
    as_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    as_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    // Messages keep arriving; martmap must hold them, not fail or skip them.
    send_lines(&kafka, &topic, rest);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        run.is_running(),
        "martmap exited while the database was away"
    );
    as_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    run.wait_until(
        "the rest loads once the database is back",
        Duration::from_secs(120),
        || messages_committed(&database) == lines.len() as i64,
    );

    let stderr = run.terminate();
    assert_logged_once(&stderr, "database unavailable");
    assert!(
        stderr.contains("database available again"),
        "recovery is logged:\n{stderr}"
    );
    assert_loaded_exactly_once(&database, lines.len() as i64);
}

/// The one 55-20049 line `run` logs for a section that the broker refuses.
fn alarm_for(security: &str) -> String {
    // A short connection setup timeout (a native option, passed through)
    // makes a TLS handshake with a plaintext listener fail in 2 s, not 30.
    let stderr = stderr_of_run(
        &format!(
            "[kafka-secure]\nbootstrap.servers={}\ng:topic:t=COBROWSE\n\
             socket.connection.setup.timeout.ms=2000\n{security}",
            bootstrap()
        ),
        5,
        &[],
    );
    let alarms: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("55-20049"))
        .collect();
    assert_eq!(alarms.len(), 1, "one alarm line:\n{stderr}");
    alarms[0].to_owned()
}

#[test]
fn tls_against_a_plaintext_broker_is_a_clear_error() {
    let alarm = alarm_for("security.protocol=SSL\n");
    assert!(
        alarm.contains("TLS with the broker failed; check security.protocol and the ssl.* options")
            && alarm.contains("SSL_HANDSHAKE"),
        "{alarm}"
    );
}

#[test]
fn sasl_the_broker_does_not_offer_is_a_clear_error() {
    let alarm = alarm_for(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN\nsasl.username=infomart\nsasl.password=s3cret\n",
    );
    assert!(
        alarm.contains(
            "authentication with the broker failed; check security.protocol and the sasl.* options"
        ) && alarm.contains("SASL PLAIN mechanism handshake failed"),
        "{alarm}"
    );
    assert!(!alarm.contains("s3cret"), "a secret in the log: {alarm}");
}
