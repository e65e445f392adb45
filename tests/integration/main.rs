//! martmap's integration tests: one binary, one module per area. They run
//! the built `martmap` binary against files under `tests/cases/`.
//!
//! Where new tests go:
//! - `aggregates`: the calendar and the aggregates against SQLite and
//!   PostgreSQL, checked against a GROUP BY computed in the test.
//! - `architecture`: rules of the code's structure, checked on `src/`.
//! - `kafka`: `martmap run` against the tansu broker `scripts/test` starts.
//! - `evolve`: the database following a changed catalog (safe changes
//!   applied, unsafe ones refused), golden files under `tests/cases/evolve/`.
//! - `faults`: `martmap run` losing its broker (a tansu of the test's own)
//!   or its database, and the client's security options.
//! - `database`: `load` and `init-db` against SQLite and the PostgreSQL
//!   cluster `scripts/test` starts.
//! - `replay`: `martmap replay-discards` after a mapping is fixed, on
//!   SQLite and PostgreSQL.
//! - `rows`: `martmap test-mapping`; golden rows per event under
//!   `tests/cases/rows/`, the discard corpus under `tests/cases/discards/`.
//! - `sasl`: `run` over SASL_SSL (stunnel4 in front of a tansu that keeps
//!   SCRAM users in PostgreSQL).
//! - `scaffold`: `martmap scaffold` proposals pinned under
//!   `tests/cases/scaffold/`, validated and loaded on SQLite and PostgreSQL.
//! - `schema`: the JSON Schemas under `schemas/` agree with martmap's own
//!   reading of mappings and catalog files.
//! - `validate`: `martmap validate-mapping`; a new golden case is a new
//!   directory under `tests/cases/validate/` (see that module's doc).

mod aggregates;
mod architecture;
mod database;
mod evolve;
mod faults;
mod kafka;
mod replay;

mod rows;
mod sasl;
mod scaffold;
mod schema;
mod validate;

use std::path::Path;
use std::process::Command;

/// Runs `martmap` from the repository root and returns the exit code, stdout
/// and stderr as one text, the form golden files hold.
pub fn martmap<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(args)
        .current_dir(repository())
        .env_remove("MARTMAP_CATALOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("the martmap binary runs");
    format!(
        "exit code: {}\n--- stdout\n{}--- stderr\n{}",
        output
            .status
            .code()
            .map_or("none".into(), |code| code.to_string()),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )
}

pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Snapshot settings for golden files kept in `dir` under the names the
/// test gives them (no module prefix, no expression header).
pub fn golden(dir: impl AsRef<Path>) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir.as_ref());
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// Waits until `done` holds, checking every 50 ms; fails the test after
/// `limit`. Tests await conditions with it rather than sleeping blindly.
pub fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `child`: a graceful stop.
pub fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
