//! `martmap replay-discards` on SQLite and PostgreSQL: a mapping with a
//! deliberate bug discards part of a load; after the fix, replaying loads
//! them exactly as a load with the fixed mapping would have, except a
//! session delivered again (newer) since, which is not overwritten; a
//! second replay changes nothing.

use std::process::{Command, Output};

use crate::database::{assert_success, backends, load, query};
use crate::repository;

const SAMPLE: &str = "samples/cobrowse-sessions.jsonl";

fn martmap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(args)
        .current_dir(repository())
        .output()
        .expect("martmap runs")
}

fn stdout(output: &Output) -> String {
    assert_success(output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The fact rows without their audit and dimension keys, in key order.
fn facts(url: &str) -> Vec<Vec<Option<String>>> {
    query(
        url,
        "SELECT SESSION_ID, CAST(SEGMENT_INDEX AS TEXT), CAST(PAGE_INDEX AS TEXT), SESSION_TOKEN, \
         END_REASON, PAGE_URL, CAST(SESSION_END_TIME_TS AS TEXT) FROM COBROWSE_FACT f \
         ORDER BY SESSION_ID, f.SEGMENT_INDEX, f.PAGE_INDEX",
    )
}

/// Equal row lists, or a failure showing the first difference.
fn assert_same(found: &[Vec<Option<String>>], expected: &[Vec<Option<String>>], what: &str) {
    let first = found.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        found.len() == expected.len() && first.is_none(),
        "{what}: {} rows, expected {}; first difference at {first:?}: {:?} vs {:?}",
        found.len(),
        expected.len(),
        first.map(|at| &found[at]),
        first.map(|at| &expected[at]),
    );
}

fn count(url: &str, sql: &str) -> String {
    query(url, sql)[0][0].clone().expect("a count")
}

#[test]
fn replay_loads_what_a_fixed_mapping_discarded_and_never_overwrites_newer_versions() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // The bug: a session token required, though sessions may have none.
    let shipped = std::fs::read_to_string(repository().join("mappings/COBROWSE.yaml")).unwrap();
    let binding = "SESSION_TOKEN: {from: session, path: \"$.token\"}";
    assert!(shipped.contains(binding));
    let buggy = dir.path().join("COBROWSE.yaml");
    let required = "SESSION_TOKEN: {from: session, path: \"$.token\", required: true}";
    std::fs::write(&buggy, shipped.replacen(binding, required, 1)).unwrap();
    let buggy = buggy.to_str().unwrap();

    // A session without a token, delivered again later with one.
    let sample = std::fs::read_to_string(repository().join(SAMPLE)).unwrap();
    let (session, newer) = sample
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event.get("token").is_none_or(|t| t.is_null()) && event.get("id").is_some())
        .map(|mut event| {
            event["token"] = "delivered-again".into();
            (event["id"].as_str().unwrap().to_owned(), event.to_string())
        })
        .expect("a sample session without a token");
    let again = dir.path().join("again.jsonl");
    std::fs::write(&again, format!("{newer}\n")).unwrap();
    let again = again.to_str().unwrap();

    for (_guard, url) in backends("replay") {
        // What a correct load gives: the sample, then the newer version.
        let (_reference_dir, reference) = crate::database::sqlite_database();
        assert_success(&load(&reference, &[SAMPLE, again]));

        let loaded = stdout(&martmap(&[
            "load",
            "--database-url",
            &url,
            "--mapping",
            buggy,
            SAMPLE,
        ]));
        assert!(loaded.contains("75 discarded"), "{loaded}");
        assert_success(&load(&url, &[again]));

        let dry = stdout(&martmap(&[
            "replay-discards",
            "--database-url",
            &url,
            "--mapping",
            "COBROWSE",
            "--dry-run",
        ]));
        assert!(
            dry.contains("of 75 discarded events of COBROWSE, 70 would load"),
            "{dry}"
        );
        assert_eq!(
            count(
                &url,
                "SELECT CAST(COUNT(REPLAYED_AUDIT_KEY) AS TEXT) FROM CTL_DISCARD"
            ),
            "0"
        );

        let replayed = stdout(&martmap(&[
            "replay-discards",
            "--database-url",
            &url,
            "--mapping",
            "COBROWSE",
        ]));
        assert!(
            replayed.contains("replayed 75 discarded events of COBROWSE: 69 loaded")
                && replayed.contains("1 left out because a newer version")
                && replayed.contains("5 still fail"),
            "{replayed}"
        );
        assert_same(
            &facts(&url),
            &facts(&reference),
            "the facts a correct load gives",
        );
        let token = query(
            &url,
            &format!(
                "SELECT DISTINCT SESSION_TOKEN FROM COBROWSE_FACT WHERE SESSION_ID = '{session}'"
            ),
        );
        assert_eq!(token, vec![vec![Some("delivered-again".to_owned())]]);
        assert_eq!(
            count(
                &url,
                "SELECT CAST(COUNT(REPLAYED_AUDIT_KEY) AS TEXT) FROM CTL_DISCARD"
            ),
            "69"
        );
        // Each replayed discard names the batch that loaded it.
        let unaudited = "SELECT CAST(COUNT(*) AS TEXT) FROM CTL_DISCARD d WHERE d.REPLAYED_AUDIT_KEY \
             IS NOT NULL AND NOT EXISTS (SELECT 1 FROM CTL_AUDIT_LOG a WHERE \
             a.AUDIT_KEY = d.REPLAYED_AUDIT_KEY AND a.SOURCE = 'replay-discards')";
        assert_eq!(count(&url, unaudited), "0");

        let discards = query(
            &url,
            "SELECT CAST(ID AS TEXT), ERROR, CAST(REPLAYED_AUDIT_KEY AS TEXT) FROM CTL_DISCARD ORDER BY ID",
        );
        let second = stdout(&martmap(&[
            "replay-discards",
            "--database-url",
            &url,
            "--mapping",
            "COBROWSE",
        ]));
        assert!(second.contains(": 0 loaded"), "{second}");
        assert_same(
            &facts(&url),
            &facts(&reference),
            "a second replay changes no fact",
        );
        assert_eq!(
            query(
                &url,
                "SELECT CAST(ID AS TEXT), ERROR, CAST(REPLAYED_AUDIT_KEY AS TEXT) FROM CTL_DISCARD ORDER BY ID"
            ),
            discards,
            "nor any discard"
        );
    }
}
