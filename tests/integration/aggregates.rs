//! The calendar and the aggregates against real databases: after every
//! committed batch, each `AGT_COBROWSE_AGENT_*` table equals the same
//! summary computed here, in Rust, from the current facts and agent
//! handlings; after a crash and a resume too; and a feature disabled then
//! enabled again is left alone, then backfilled.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Output};

use martmap::calendar::{Calendar, Level};

use crate::database::{assert_success, backends, block_on, query, sqlite_database};
use crate::repository;

const LEVELS: [Level; 4] = [Level::Subhr, Level::Hour, Level::Day, Level::Month];
const ZONE: &str = "America/New_York";
/// The shipped samples: co-browse sessions, and the agent handlings of
/// their interactions.
const SESSIONS: &str = "samples/cobrowse-sessions.jsonl";
const HANDLINGS: &str = "samples/agent-handlings.jsonl";

/// The measures of one (bucket, agent) row, in the table's column order.
type Measures = [i64; 8];

/// `AGT_COBROWSE_AGENT_<level>` computed from the facts as DESIGN §7 defines it.
fn expected(url: &str, level: Level) -> BTreeMap<(i64, i64), Measures> {
    summary(url, level)
        .into_iter()
        .map(|(key, (measures, _))| (key, measures))
        .collect()
}

/// The summary per bucket and agent: the eight measures, and the longest
/// page visit (of the test aggregate AGT_COBROWSE_CHECK).
fn summary(url: &str, level: Level) -> BTreeMap<(i64, i64), (Measures, Option<i64>)> {
    let calendar = Calendar::new(ZONE.parse().unwrap());
    let mut agents: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for row in query(
        url,
        "SELECT media_server_ixn_guid, CAST(agent_key AS TEXT) FROM ixn_agent",
    ) {
        let guid = row[0].clone().unwrap();
        agents.entry(guid).or_default().push(int(&row[1]).unwrap());
    }
    #[derive(Default)]
    struct Bucket {
        sessions: BTreeSet<String>,
        first: BTreeSet<String>,
        write: BTreeSet<String>,
        segments: BTreeSet<(String, i64)>,
        write_segments: BTreeSet<(String, i64)>,
        page_visits: i64,
        session_seconds: BTreeMap<String, i64>,
        page_seconds: i64,
        longest_page: Option<i64>,
    }
    let mut buckets: BTreeMap<(i64, i64), Bucket> = BTreeMap::new();
    let facts = query(
        url,
        "SELECT f.session_id, CAST(f.segment_index AS TEXT), CAST(f.page_index AS TEXT),
                CAST(f.start_date_time_key AS TEXT), CAST(f.first_session AS TEXT),
                CAST(f.session_rw_flag AS TEXT), m.segment_mode,
                CAST(f.session_start_time_ts AS TEXT), CAST(f.session_end_time_ts AS TEXT),
                CAST(f.page_start_time_ts AS TEXT), CAST(f.page_end_time_ts AS TEXT),
                f.media_server_ixn_guid
         FROM cobrowse_fact f JOIN cobrowse_mode m ON m.id = f.cobrowse_mode_key",
    );
    for row in facts {
        let session = row[0].clone().unwrap();
        let (segment, page) = (int(&row[1]).unwrap(), int(&row[2]).unwrap());
        let bucket_key = calendar.level_key(level, int(&row[3]).unwrap());
        let handled = row[11]
            .as_ref()
            .and_then(|guid| agents.get(guid))
            .cloned()
            .unwrap_or_else(|| vec![1]);
        for agent in handled {
            let bucket = buckets.entry((bucket_key, agent)).or_default();
            bucket.sessions.insert(session.clone());
            if int(&row[4]) == Some(1) {
                bucket.first.insert(session.clone());
            }
            if int(&row[5]) == Some(1) {
                bucket.write.insert(session.clone());
            }
            if segment >= 0 {
                bucket.segments.insert((session.clone(), segment));
                if row[6].as_deref() == Some("WRITE") {
                    bucket.write_segments.insert((session.clone(), segment));
                }
            }
            if page >= 0 {
                bucket.page_visits += 1;
                if let (Some(start), Some(end)) = (int(&row[9]), int(&row[10])) {
                    bucket.page_seconds += end - start;
                    bucket.longest_page = bucket.longest_page.max(Some(end - start));
                }
            }
            if let (Some(start), Some(end)) = (int(&row[7]), int(&row[8])) {
                bucket.session_seconds.insert(session.clone(), end - start);
            }
        }
    }
    buckets
        .into_iter()
        .map(|(key, b)| {
            let measures = [
                b.sessions.len() as i64,
                b.first.len() as i64,
                b.write.len() as i64,
                b.segments.len() as i64,
                b.write_segments.len() as i64,
                b.page_visits,
                b.session_seconds.values().sum(),
                b.page_seconds,
            ];
            (key, (measures, b.longest_page))
        })
        .collect()
}

/// The rows of `AGT_COBROWSE_AGENT_<level>` as stored.
fn stored(url: &str, level: Level) -> BTreeMap<(i64, i64), Measures> {
    stored_in(url, "agt_cobrowse_agent", level)
}

/// The eight measures of `<table>_<level>` as stored.
fn stored_in(url: &str, table: &str, level: Level) -> BTreeMap<(i64, i64), Measures> {
    let columns = [
        "sessions",
        "first_sessions",
        "write_sessions",
        "segments",
        "write_segments",
        "page_visits",
        "session_seconds",
        "page_seconds",
    ];
    let select: Vec<String> = ["date_time_key", "agent_key"]
        .iter()
        .chain(&columns)
        .map(|c| format!("CAST({c} AS TEXT)"))
        .collect();
    let sql = format!(
        "SELECT {} FROM {table}_{}",
        select.join(", "),
        level.name().to_lowercase()
    );
    query(url, &sql)
        .into_iter()
        .map(|row| {
            let values: Vec<i64> = row.iter().map(|v| int(v).expect("not null")).collect();
            (
                (values[0], values[1]),
                values[2..].try_into().expect("8 measures"),
            )
        })
        .collect()
}

fn int(value: &Option<String>) -> Option<i64> {
    value.as_deref().map(|v| v.parse().expect("an integer"))
}

/// Every level table equals the summary of the current facts.
fn assert_aggregates_exact(url: &str, when: &str) {
    for level in LEVELS {
        let (expected, stored) = (expected(url, level), stored(url, level));
        if expected != stored {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| stored.get(k) != Some(v))
                .take(5)
                .collect();
            let extra: Vec<_> = stored
                .iter()
                .filter(|(k, v)| expected.get(k) != Some(v))
                .take(5)
                .collect();
            panic!(
                "{when}: AGT_COBROWSE_AGENT_{} differs from the facts' GROUP BY\n expected (first 5 differing): {missing:?}\n stored (first 5 differing): {extra:?}",
                level.name()
            );
        }
    }
}

/// The test aggregate AGT_COBROWSE_CHECK (a maximum: recomputed from the
/// facts, never by deltas; WEEK too) equals the summary as well.
fn assert_check_aggregate_exact(url: &str, when: &str) {
    for level in [
        Level::Subhr,
        Level::Hour,
        Level::Day,
        Level::Week,
        Level::Month,
    ] {
        let summary = summary(url, level);
        let measures: BTreeMap<_, _> = summary.iter().map(|(k, (m, _))| (*k, *m)).collect();
        assert_eq!(
            stored_in(url, "agt_cobrowse_check", level),
            measures,
            "{when}: AGT_COBROWSE_CHECK_{}",
            level.name()
        );
        let longest: BTreeMap<(i64, i64), Option<i64>> =
            summary.iter().map(|(k, (_, l))| (*k, *l)).collect();
        let stored: BTreeMap<(i64, i64), Option<i64>> = query(
            url,
            &format!(
                "SELECT CAST(date_time_key AS TEXT), CAST(agent_key AS TEXT), CAST(longest_page AS TEXT) FROM agt_cobrowse_check_{}",
                level.name().to_lowercase()
            ),
        )
        .into_iter()
        .map(|row| ((int(&row[0]).unwrap(), int(&row[1]).unwrap()), int(&row[2])))
        .collect();
        assert_eq!(
            stored,
            longest,
            "{when}: AGT_COBROWSE_CHECK_{}.LONGEST_PAGE",
            level.name()
        );
    }
}

/// The test aggregate AGT_COBROWSE_PAGE (deltas, joined to a dimension
/// the co-browse mapping creates members in) equals its GROUP BY in SQL:
/// sessions and page visits per day (DATE_TIME's day key) and page path;
/// and its 64 copies of the session count equal it, on every level.
fn assert_page_aggregate_exact(url: &str, when: &str) {
    let rows = |sql: &str| -> BTreeMap<(i64, String), (i64, i64)> {
        query(url, sql)
            .into_iter()
            .map(|row| {
                let path = row[1].clone().unwrap_or_default();
                let (sessions, visits) = (int(&row[2]).unwrap(), int(&row[3]).unwrap());
                ((int(&row[0]).unwrap(), path), (sessions, visits))
            })
            .collect()
    };
    let expected = rows(
        "SELECT CAST(d.date_time_day_key AS TEXT), p.page_path,
                CAST(COUNT(DISTINCT f.session_id) AS TEXT),
                CAST(SUM(CASE WHEN f.page_index >= 0 THEN 1 ELSE 0 END) AS TEXT)
         FROM cobrowse_fact f
         JOIN cobrowse_page p ON p.id = f.cobrowse_page_key
         JOIN date_time d ON d.date_time_key = f.start_date_time_key
         GROUP BY d.date_time_day_key, p.page_path",
    );
    let stored = rows(
        "SELECT CAST(date_time_key AS TEXT), page_path, CAST(sessions AS TEXT),
                CAST(page_visits AS TEXT)
         FROM agt_cobrowse_page_day",
    );
    assert_eq!(stored, expected, "{when}: AGT_COBROWSE_PAGE_DAY");
    let copies: Vec<String> = (1..=64)
        .map(|n| format!("sessions_{n:02} <> sessions"))
        .collect();
    for level in ["subhr", "day"] {
        let differing = query(
            url,
            &format!(
                "SELECT CAST(COUNT(*) AS TEXT) FROM agt_cobrowse_page_{level} WHERE {}",
                copies.join(" OR ")
            ),
        );
        assert_eq!(
            int(&differing[0][0]),
            Some(0),
            "{when}: AGT_COBROWSE_PAGE_{level}: a copy of SESSIONS differs"
        );
    }
}

/// `assert_aggregates_exact` from inside an async block.
fn exact_outside_runtime(url: &str, when: &str) {
    std::thread::scope(|scope| {
        let check = scope.spawn(|| {
            assert_aggregates_exact(url, when);
            assert_check_aggregate_exact(url, when);
            assert_page_aggregate_exact(url, when);
        });
        if let Err(panic) = check.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// A small deterministic generator (xorshift), so that a failure is
/// reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const IXNS: [&str; 6] = ["IXN-A", "IXN-B", "IXN-C", "IXN-D", "IXN-E", "IXN-F"];

/// A co-browse session event: its start within three days around the
/// 2026-11-01 DST change in New York, so buckets cross it; its segments in
/// one of the first `modes` modes (WRITE last, so a later batch may be the
/// first to create its member).
fn session(rng: &mut Rng, id: usize, max_segments: u64, modes: u64) -> serde_json::Value {
    let start = 1_761_955_200_000 + rng.below(3 * 24 * 3600) as i64 * 1000; // 2026-11-01T00:00Z
    let mut clock = start;
    let mut page_index = 0;
    let segments: Vec<serde_json::Value> = (0..rng.below(max_segments + 1))
        .map(|s| {
            let mode = ["POINTER", "DRAW", "WRITE"][rng.below(modes.clamp(1, 3)) as usize];
            let pages: Vec<serde_json::Value> = (0..rng.below(4))
                .map(|_| {
                    let begin = clock;
                    clock += 1000 * (1 + rng.below(300)) as i64;
                    page_index += 1;
                    let mut page = serde_json::json!({
                        "url": format!("https://shop.example.com/p{}", rng.below(5)),
                        "startTime": begin,
                    });
                    if rng.chance(85) {
                        page["endTime"] = clock.into();
                    }
                    page
                })
                .collect();
            serde_json::json!({"index": s, "mode": mode, "pages": pages})
        })
        .collect();
    let mut event = serde_json::json!({
        "id": format!("session-{id}"),
        "startTime": start,
        "segments": segments,
        "firstSession": rng.chance(50),
    });
    if rng.chance(80) {
        event["endTime"] = (clock + 5000).into();
    }
    if rng.chance(85) {
        event["ixnId"] = IXNS[rng.below(IXNS.len() as u64) as usize].into();
    }
    let _ = page_index;
    event
}

fn handling(rng: &mut Rng) -> serde_json::Value {
    let agent = rng.below(4);
    serde_json::json!({
        "ixnId": IXNS[rng.below(IXNS.len() as u64) as usize],
        "agent": {"employeeId": format!("E{agent}"), "name": format!("Agent {agent}")},
        "startTime": 1_761_955_200_000i64,
    })
}

fn write_lines(
    dir: &std::path::Path,
    name: &str,
    events: &[serde_json::Value],
) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("batch file");
    for event in events {
        writeln!(file, "{event}").expect("write");
    }
    path
}

/// Random sequences of batches — new sessions, re-deliveries, later
/// versions that shrink a session or move it in time, agent handlings
/// before and after their sessions — with the aggregates checked after
/// every committed batch, on every backend.
#[test]
fn aggregates_equal_the_group_by_after_every_batch_on_every_backend() {
    use martmap::runtime::{Stop, load::load};
    use martmap::sink::{AggregateSetup, Database, Sink};
    use martmap::{catalog::Catalog, diagnostic::SourceFile, mapping};

    let catalog = Catalog::load(&repository().join("schemas")).expect("catalog");
    let plan = |file: &str| {
        let text = std::fs::read_to_string(repository().join(file)).expect("mapping");
        mapping::load_plan(&SourceFile::new(file, text), &catalog).expect("valid mapping")
    };
    let mut aggregates = martmap::aggregate::load_dir(&repository().join("aggregates"), &catalog)
        .expect("valid aggregates");
    aggregates.extend(
        martmap::aggregate::load_dir(&repository().join("tests/cases/aggregates"), &catalog)
            .expect("valid test aggregates"),
    );
    for seed in [7u64, 1234, 99_991] {
        for (dir, url) in backends(&format!("aggregate_property_{seed}")) {
            let mut rng = Rng(seed);
            let mut sessions: Vec<serde_json::Value> = Vec::new();
            block_on(async {
                let mut database = Database::connect(&url, &catalog).await.expect("connect");
                let setup = AggregateSetup {
                    date_time: martmap::options::DateTimeOptions {
                        zone: ZONE.parse().unwrap(),
                        ..Default::default()
                    },
                    aggregates: aggregates.clone(),
                    features: vec!["cobrowse".into()],
                    rebuild: false,
                };
                database
                    .aggregate(&catalog, setup)
                    .await
                    .expect("aggregates set up");
                let mut cobrowse =
                    Sink::open(database.clone(), &catalog, plan("mappings/COBROWSE.yaml"))
                        .await
                        .expect("open");
                let mut agents =
                    Sink::open(database.clone(), &catalog, plan("mappings/IXN_AGENT.yaml"))
                        .await
                        .expect("open");
                let stop = Stop::new();
                for step in 0..14 {
                    let choice = rng.below(4);
                    let (sink, events): (&mut Sink, Vec<serde_json::Value>) = match choice {
                        0 | 1 if sessions.is_empty() || choice == 0 => {
                            let fresh: Vec<_> = (0..1 + rng.below(5))
                                .map(|_| {
                                    let id = sessions.len() + rng.below(1000) as usize;
                                    session(&mut rng, id, 3, 1 + step / 3)
                                })
                                .collect();
                            sessions.extend(fresh.iter().cloned());
                            (&mut cobrowse, fresh)
                        }
                        1 => {
                            // Re-deliveries and later versions (fewer
                            // segments, maybe another start) of old sessions.
                            let mut again = Vec::new();
                            for _ in 0..1 + rng.below(3) {
                                let at = rng.below(sessions.len() as u64) as usize;
                                let mut event = sessions[at].clone();
                                if rng.chance(60) {
                                    let id = event["id"]
                                        .as_str()
                                        .unwrap()
                                        .trim_start_matches("session-");
                                    let id: usize = id.parse().unwrap();
                                    event = session(&mut rng, id, 1, 1 + step / 3);
                                    sessions[at] = event.clone();
                                }
                                again.push(event);
                            }
                            (&mut cobrowse, again)
                        }
                        _ => {
                            let handlings =
                                (0..1 + rng.below(4)).map(|_| handling(&mut rng)).collect();
                            (&mut agents, handlings)
                        }
                    };
                    let file =
                        write_lines(dir.path(), &format!("batch-{seed}-{step}.jsonl"), &events);
                    let totals = load(sink, &[file], 10_000, &stop, |_| {})
                        .await
                        .expect("batch committed");
                    assert_eq!(totals.batches, 1);
                    exact_outside_runtime(&url, &format!("{url} seed {seed} after batch {step}"));
                }
                database.close().await;
            });
            assert!(
                !stored(&url, Level::Day).is_empty(),
                "the sequence of seed {seed} aggregated something"
            );
        }
    }
}

fn martmap_load(url: &str, options: Option<&str>, mapping: &str, files: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_martmap"));
    command.args(["load", "--database-url", url, "--mapping", mapping]);
    if let Some(options) = options {
        command.args(["--options", options]);
    }
    command
        .args(files)
        .current_dir(repository())
        .output()
        .expect("martmap runs")
}

fn options_file(dir: &std::path::Path, name: &str, features: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[date-time]\ndate-time-tz={ZONE}\n\n[agg-feature]\n{features}\n"),
    )
    .expect("options file");
    path.display().to_string()
}

/// Removing `enable-cobrowse` stops the upkeep (said once in the log);
/// adding it back recomputes the aggregates from the facts.
#[test]
fn a_disabled_feature_is_left_alone_and_backfilled_when_enabled_again() {
    let (dir, url) = sqlite_database();
    let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
    let off = options_file(dir.path(), "off.ini", "");

    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/COBROWSE.yaml",
        &[SESSIONS],
    ));
    assert_aggregates_exact(&url, "enabled, co-browse loaded");

    let disabled = martmap_load(&url, Some(&off), "mappings/IXN_AGENT.yaml", &[HANDLINGS]);
    assert_success(&disabled);
    let log = String::from_utf8_lossy(&disabled.stderr);
    assert_eq!(log.matches("no longer maintained").count(), 1, "{log}");
    let stale = stored(&url, Level::Day);
    assert_ne!(
        stale,
        expected(&url, Level::Day),
        "the handlings changed the agents"
    );
    assert!(
        stale.keys().all(|(_, agent)| *agent == 1),
        "no agent was known while enabled"
    );

    let again = martmap_load(&url, Some(&off), "mappings/IXN_AGENT.yaml", &[HANDLINGS]);
    assert_success(&again);
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("no longer maintained"),
        "said once only"
    );
    assert_eq!(
        stored(&url, Level::Day),
        stale,
        "not maintained while disabled"
    );

    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/IXN_AGENT.yaml",
        &[HANDLINGS],
    ));
    assert_aggregates_exact(&url, "enabled again");
}

/// The aggregates commit with the facts: a load killed mid-way leaves them
/// equal to the GROUP BY of what committed, and so does resuming it.
#[test]
fn a_killed_load_leaves_the_aggregates_exact() {
    let (dir, url) = sqlite_database();
    let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/IXN_AGENT.yaml",
        &[HANDLINGS],
    ));
    // A bigger input than the sample: the same sessions four times over,
    // re-delivered, so that the kill lands while batches commit.
    let sample = std::fs::read_to_string(repository().join(SESSIONS)).unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, sample.repeat(4)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["load", "--database-url", &url, "--options", &on])
        .args(["--mapping", "mappings/COBROWSE.yaml", "--batch-size", "50"])
        .arg(&input)
        .current_dir(repository())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("martmap starts");
    crate::wait_until(
        "a few batches committed",
        std::time::Duration::from_secs(60),
        || {
            let audit = query(
                &url,
                "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_audit_log WHERE mapping_name = 'COBROWSE'",
            );
            audit.first().and_then(|row| int(&row[0])).unwrap_or(0) >= 5
        },
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let committed = query(
        &url,
        "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_audit_log WHERE mapping_name = 'COBROWSE'",
    );
    let batches = int(&committed[0][0]).unwrap();
    assert!(
        batches < 4 * 1206 / 50,
        "killed before the end ({batches} batches)"
    );
    assert_aggregates_exact(&url, "after SIGKILL");

    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/COBROWSE.yaml",
        &[input.to_str().unwrap()],
    ));
    assert_aggregates_exact(&url, "after resuming");
}

/// DATE_TIME holds the local days of the facts and every day from today to
/// `date-time-max-days-ahead`, with 92, 96 or 100 intervals each; a
/// calendar filled in one zone is not silently extended in another.
#[test]
fn the_calendar_holds_the_facts_days_and_the_days_ahead() {
    let (dir, url) = sqlite_database();
    let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/COBROWSE.yaml",
        &[SESSIONS],
    ));
    let per_day: BTreeMap<String, i64> = query(
        &url,
        "SELECT cal_date, CAST(COUNT(*) AS TEXT) FROM date_time GROUP BY cal_date",
    )
    .into_iter()
    .map(|row| (row[0].clone().unwrap(), int(&row[1]).unwrap()))
    .collect();
    assert_eq!(per_day.get("2026-03-02"), Some(&96), "a day of the sample");
    let calendar = Calendar::new(ZONE.parse().unwrap());
    let today = calendar.date(chrono::Utc::now().timestamp());
    for ahead in 0..=366 {
        let day = (today + chrono::Days::new(ahead))
            .format("%Y-%m-%d")
            .to_string();
        let intervals = per_day.get(&day).copied();
        assert!(
            matches!(intervals, Some(92 | 96 | 100)),
            "{day}: {intervals:?} intervals"
        );
    }
    let counts: BTreeSet<i64> = per_day.values().copied().collect();
    assert!(
        counts.contains(&92) && counts.contains(&100),
        "a year ahead in {ZONE} has both DST changes: {counts:?}"
    );
    let facts_without_interval = query(
        &url,
        "SELECT CAST(COUNT(*) AS TEXT) FROM cobrowse_fact f \
         LEFT JOIN date_time d ON d.date_time_key = f.start_date_time_key WHERE d.date_time_key IS NULL",
    );
    assert_eq!(int(&facts_without_interval[0][0]), Some(0));

    // Fewer days ahead than the new minimum: the next start extends it.
    let further = dir.path().join("further.ini");
    std::fs::write(
        &further,
        format!("[date-time]\ndate-time-tz={ZONE}\ndate-time-min-days-ahead=400\ndate-time-max-days-ahead=500\n"),
    )
    .unwrap();
    assert_success(&martmap_load(
        &url,
        Some(further.to_str().unwrap()),
        "mappings/COBROWSE.yaml",
        &["tests/cases/rows/nulls/event.json"],
    ));
    let last = (today + chrono::Days::new(500))
        .format("%Y-%m-%d")
        .to_string();
    let rows = query(
        &url,
        &format!("SELECT CAST(COUNT(*) AS TEXT) FROM date_time WHERE cal_date = '{last}'"),
    );
    assert!(
        matches!(int(&rows[0][0]), Some(92 | 96 | 100)),
        "{last} filled: {rows:?}"
    );

    let paris = dir.path().join("paris.ini");
    std::fs::write(&paris, "[date-time]\ndate-time-tz=Europe/Paris\n").unwrap();
    let refused = martmap_load(
        &url,
        Some(paris.to_str().unwrap()),
        "mappings/COBROWSE.yaml",
        &[SESSIONS],
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("another time zone"), "{message}");
}

/// Sessions stored while the feature was off, then the agents of their
/// interactions with it on: the aggregate is computed from the stored
/// facts at the start, and each batch of agents finds the sessions it
/// changes among them.
#[test]
fn agents_arriving_after_the_feature_is_enabled_find_the_sessions_stored_before() {
    for (dir, url) in backends("agents_after_enabling") {
        let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
        let off = options_file(dir.path(), "off.ini", "");
        assert_success(&martmap_load(
            &url,
            Some(&off),
            "mappings/COBROWSE.yaml",
            &[SESSIONS],
        ));
        assert_success(&martmap_load(
            &url,
            Some(&on),
            "mappings/IXN_AGENT.yaml",
            &[HANDLINGS],
        ));
        assert!(
            stored(&url, Level::Day)
                .keys()
                .any(|(_, agent)| *agent != 1),
            "the handlings named agents"
        );
        assert_aggregates_exact(&url, "sessions stored with the feature off, then agents");
    }
}

/// `martmap aggregate --rebuild` recomputes every bucket from the facts.
#[test]
fn aggregate_rebuild_recomputes_every_bucket() {
    let (dir, url) = sqlite_database();
    let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/IXN_AGENT.yaml",
        &[HANDLINGS],
    ));
    assert_success(&martmap_load(
        &url,
        Some(&on),
        "mappings/COBROWSE.yaml",
        &[SESSIONS],
    ));
    block_on(async {
        use sea_orm::ConnectionTrait;
        let db = sea_orm::Database::connect(&url).await.expect("connect");
        db.execute_unprepared("DELETE FROM AGT_COBROWSE_AGENT_DAY")
            .await
            .unwrap();
        db.execute_unprepared("UPDATE AGT_COBROWSE_AGENT_SUBHR SET SESSIONS = 0")
            .await
            .unwrap();
        db.close().await.unwrap();
    });
    assert_ne!(stored(&url, Level::Day), expected(&url, Level::Day));
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "aggregate",
            "--rebuild",
            "--options",
            &on,
            "--database-url",
            &url,
        ])
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    assert_success(&output);
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains("computed now: AGT_COBROWSE_AGENT"),
        "{summary}"
    );
    assert_aggregates_exact(&url, "after aggregate --rebuild");
}

/// Sessions and the agents of their interactions loaded at the same time by
/// two processes into PostgreSQL, in small interleaved batches: each batch
/// sees what the other committed, and the aggregates end exact.
#[test]
fn concurrent_loads_of_facts_and_agents_keep_the_aggregates_exact() {
    let url = crate::database::postgres_database("aggregate_concurrent");
    let dir = tempfile::tempdir().expect("temporary directory");
    let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
    // Tables and aggregates first, so that both processes start loading.
    let setup = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["aggregate", "--options", &on, "--database-url", &url])
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    assert_success(&setup);
    let spawn = |mapping: &str, file: &str| {
        Command::new(env!("CARGO_BIN_EXE_martmap"))
            .args(["load", "--database-url", &url, "--options", &on])
            .args(["--mapping", mapping, "--batch-size", "20", file])
            .current_dir(repository())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("martmap starts")
    };
    let sessions = spawn("mappings/COBROWSE.yaml", SESSIONS);
    let agents = spawn("mappings/IXN_AGENT.yaml", HANDLINGS);
    assert_success(&sessions.wait_with_output().expect("sessions loaded"));
    assert_success(&agents.wait_with_output().expect("agents loaded"));
    assert_aggregates_exact(&url, "after concurrent loads");
}

/// `run` and `load` report a misspelt feature, a flag with a value and a
/// bad time zone as diagnostics with their lines, exit 1, before touching
/// a database or a broker.
#[test]
fn run_and_load_report_calendar_and_feature_problems_as_diagnostics() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = dir.path().join("bad.ini");
    std::fs::write(
        &options,
        "[kafka-cobrowse]\nbootstrap.servers=localhost:1\ng:topic:all-cobrowse-historical=COBROWSE\n\n\
         [date-time]\ndate-time-tz=America/New_Yrok\n\n[agg-feature]\nenable-cobrowze\nenable-cobrowse=1\n",
    )
    .unwrap();
    let options = options.display().to_string();
    let database = format!("sqlite://{}", dir.path().join("never.db").display());
    for args in [
        vec![
            "run",
            "--once",
            "--options",
            &options,
            "--database-url",
            &database,
        ],
        vec![
            "load",
            "--options",
            &options,
            "--database-url",
            &database,
            "--mapping",
            "mappings/COBROWSE.yaml",
            SESSIONS,
        ],
    ] {
        let output = crate::martmap(&args);
        assert!(output.starts_with("exit code: 1\n"), "{args:?}: {output}");
        for expected in [
            "martmap::options::unknown_time_zone",
            "did you mean `America/New_York`?",
            "martmap::options::unknown_feature",
            "did you mean `cobrowse`?",
            "martmap::options::flag_with_value",
            "bad.ini:9:1",
        ] {
            assert!(
                output.contains(expected),
                "{args:?}: no `{expected}` in\n{output}"
            );
        }
    }
    assert!(
        !dir.path().join("never.db").exists(),
        "no database was touched"
    );
}

/// A changed aggregate file is computed again at the next start, into
/// tables of its new shape (here: one more measure).
#[test]
fn a_changed_aggregate_is_rebuilt_in_tables_of_its_new_shape() {
    let (dir, url) = sqlite_database();
    let on = options_file(dir.path(), "on.ini", "enable-cobrowse");
    let aggregates = dir.path().join("aggregates");
    std::fs::create_dir(&aggregates).unwrap();
    let file = aggregates.join("AGT_COBROWSE_AGENT.yaml");
    let shipped =
        std::fs::read_to_string(repository().join("aggregates/AGT_COBROWSE_AGENT.yaml")).unwrap();
    std::fs::write(&file, &shipped).unwrap();
    let load = |files: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_martmap"))
            .args(["load", "--database-url", &url, "--options", &on])
            .arg("--aggregates")
            .arg(&aggregates)
            .args(["--mapping", "mappings/COBROWSE.yaml"])
            .args(files)
            .current_dir(repository())
            .output()
            .expect("martmap runs")
    };
    assert_success(&load(&[SESSIONS]));
    assert_aggregates_exact(&url, "first definition");

    std::fs::write(&file, format!("{shipped}  ROWS: {{count: rows}}\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["aggregate", "--options", &on, "--database-url", &url])
        .arg("--aggregates")
        .arg(&aggregates)
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    assert_success(&output);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("computed now: AGT_COBROWSE_AGENT"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_aggregates_exact(&url, "second definition");
    let rows = query(
        &url,
        "SELECT CAST(SUM(rows) AS TEXT) FROM agt_cobrowse_agent_month",
    );
    let facts = query(&url, "SELECT CAST(COUNT(*) AS TEXT) FROM cobrowse_fact");
    assert_eq!(
        rows, facts,
        "no agents are loaded: one group row per fact row"
    );
}
