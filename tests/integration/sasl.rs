//! SASL_SSL end to end: TLS and SCRAM-SHA-512 between `run` and a broker.
//!
//! tansu 0.6 cannot serve TLS itself, so each test terminates TLS in front
//! of it with `stunnel4` (a throw-away CA and server certificate made here
//! with `openssl`), the broker advertising the TLS port. tansu keeps SCRAM
//! credentials only with a database storage engine: the broker here stores
//! in an SQLite file of its own (the build `scripts/test` installs has that
//! engine: `MARTMAP_TEST_TANSU_SCRAM`). The user is created through the
//! plain port before the broker is restarted to require authentication.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::database::sqlite_database;
use crate::kafka::{
    assert_loaded_exactly_once, client, create_topic, free_port, run_once, sample_lines,
    send_lines, stderr_of_run, tansu,
};
use crate::wait_until;

const USER: &str = "infomart";
const PASSWORD: &str = "Scram-s3cret-42";

fn run(program: &str, args: &[&str], dir: &Path) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A self-signed CA valid for two days: `<name>.pem` and `<name>.key` in `at`.
fn ca(at: &Path, name: &str, subject: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let args = [
        "req", "-x509", "-newkey", "rsa:2048", "-keyout", &key, "-out", &pem,
    ];
    run(
        "openssl",
        &[&args[..], &["-subj", subject, "-days", "2", "-nodes"]].concat(),
        at,
    );
}

/// A broker behind TLS with one SCRAM-SHA-512 user, stopped on drop.
struct Secured {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    /// The TLS port, as the broker advertises it.
    bootstrap: String,
}

impl Secured {
    fn start() -> Secured {
        let dir = tempfile::tempdir().expect("temporary directory");
        let at = dir.path();
        // A CA, a server certificate for 127.0.0.1 signed by it, and a CA
        // that signed nothing here.
        ca(at, "ca", "/CN=martmap test CA");
        ca(at, "other", "/CN=another CA");
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            at,
        );
        std::fs::write(
            at.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
            at,
        );

        let (plain, tls) = (free_port(), free_port());
        let broker = |authentication: bool| {
            let mut command = Command::new(tansu());
            command
                .current_dir(at)
                .args(["broker", "--storage-engine", "sqlite://tansu.db"])
                .arg("--listener-url")
                .arg(format!("tcp://127.0.0.1:{plain}"))
                .arg("--advertised-listener-url")
                .arg(format!("tcp://127.0.0.1:{tls}"));
            if authentication {
                command.arg("--authentication");
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tansu starts");
            wait_until("tansu listens", Duration::from_secs(20), || {
                std::net::TcpStream::connect(("127.0.0.1", plain)).is_ok()
            });
            child
        };
        let mut first = broker(false);
        run(
            &tansu(),
            &[
                "user",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{plain}"),
                USER,
                PASSWORD,
            ],
            at,
        );
        let _ = first.kill();
        let _ = first.wait();
        wait_until("the plain port is free", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", plain)).is_err()
        });
        let mut children = vec![broker(true)];

        let config = at.join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                at.join("server.pem").display(),
                at.join("server.key").display()
            ),
        )
        .unwrap();
        children.push(
            Command::new("stunnel4")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("stunnel4 starts (scripts/test installs it)"),
        );
        wait_until("stunnel listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok()
        });
        Secured {
            children,
            bootstrap: format!("127.0.0.1:{tls}"),
            dir,
        }
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The client options of a `[kafka-…]` section for this broker.
    fn options(&self, password: &str, ca: &str) -> Vec<(String, String)> {
        [
            ("bootstrap.servers", self.bootstrap.as_str()),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", USER),
            ("sasl.password", password),
            ("ssl.ca.location", self.ca(ca).to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn section(&self, topic: &str, password: &str, ca: &str) -> String {
        let mut text = format!("[kafka-secure]\ng:topic:{topic}=COBROWSE\n");
        for (key, value) in self.options(password, ca) {
            text.push_str(&format!("{key}={value}\n"));
        }
        text
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `run --once` over SASL_SSL (TLS verified against the test's CA, SCRAM-
/// SHA-512) loads the sample exactly as over plaintext; a wrong password
/// and an untrusted CA each give one clear 55-20049 line naming the cause,
/// without the secret.
#[test]
fn run_over_sasl_ssl_loads_exactly_and_reports_a_wrong_password_or_ca() {
    let secured = Secured::start();
    let topic = format!("cobrowse-sasl-{}", std::process::id());
    let options = secured.options(PASSWORD, "ca.pem");
    let extra: Vec<(&str, &str)> = options
        .iter()
        .filter(|(key, _)| key != "bootstrap.servers")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let producer = client(&secured.bootstrap, &extra);
    create_topic(&producer, &topic, 3);
    let lines = sample_lines();
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let produced = send_lines(&producer, &topic, &lines) as i64;

    let (dir, database) = sqlite_database();
    let path = dir.path().join("secure.ini");
    std::fs::write(&path, secured.section(&topic, PASSWORD, "ca.pem")).unwrap();
    let output = run_once(path.to_str().unwrap(), &database);
    assert!(
        output.status.success(),
        "run --once over SASL_SSL failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_loaded_exactly_once(&database, produced);

    let alarm = |section: String| -> String {
        let stderr = stderr_of_run(&section, 8, &[]);
        let alarms: Vec<&str> = stderr.lines().filter(|l| l.contains("55-20049")).collect();
        assert_eq!(alarms.len(), 1, "one alarm line:\n{stderr}");
        assert!(
            !stderr.contains(PASSWORD) && !stderr.contains("Wrong-"),
            "a secret in the log:\n{stderr}"
        );
        alarms[0].to_owned()
    };
    let untrusted = alarm(secured.section(&topic, PASSWORD, "other.pem"));
    assert!(
        untrusted.contains("TLS with the broker failed")
            && untrusted.contains("certificate verify failed"),
        "{untrusted}"
    );
    let wrong = alarm(secured.section(&topic, "Wrong-password", "ca.pem"));
    assert!(
        wrong.contains("authentication with the broker failed"),
        "{wrong}"
    );
}
