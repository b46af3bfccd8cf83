//! Access control (SPEC S6) end to end through the dataflow: who may make which delta
//! (S6.2), who may grant (S6.1), the order grants take effect in (S6.4), edges across
//! owners, the `grants` view, on 1 and 2 workers and any batching, each run also held
//! to the reference model (`studio_tests::model`). Decisions: docs/access.md.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use studio_config::ReplayConfig;
use studio_connectors::content::ContentSpec;
use studio_connectors::retry::RetryPolicy;
use studio_connectors::sqlite::OpenMode;
use studio_dataflow::replay::{Progress, ReplayReport, replay};
use studio_tests::model::{self, join_lines};
use studio_tests::views::{Tables, new_sqlite_views, read_tables};

const OWNER: u32 = 1;
const STRANGER: u32 = 9;

fn user(n: u32) -> String {
    format!("00000005-0000-4000-8000-{n:012x}")
}

fn blob(n: u32) -> String {
    format!("0000000b-0000-4000-8000-{n:012x}")
}

/// Writes a log: each record gets a fresh id and the next second.
#[derive(Default)]
struct Log {
    lines: Vec<Vec<u8>>,
}

impl Log {
    fn id(&self) -> String {
        format!("0000000d-0000-4000-8000-{:012x}", self.lines.len() + 1)
    }

    fn at(&self) -> String {
        let n = self.lines.len();
        format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            n / 3600,
            (n / 60) % 60,
            n % 60
        )
    }

    fn push(&mut self, line: String) -> usize {
        self.lines.push(line.into_bytes());
        self.lines.len() - 1
    }

    /// A delta; `extra` is appended inside the object (`,"patch":...`).
    fn delta(&mut self, b: u32, u: u32, op: &str, version: u64, extra: &str) -> usize {
        let line = format!(
            r#"{{"id":"{}","blob_id":"{}","user_id":"{}","operation":"{op}","version":{version},"created_at":"{}"{extra}}}"#,
            self.id(),
            blob(b),
            user(u),
            self.at()
        );
        self.push(line)
    }

    fn create(&mut self, b: u32, u: u32) -> usize {
        self.delta(b, u, "create", 1, r#","patch":{"content":"hi"}"#)
    }

    fn update(&mut self, b: u32, u: u32, version: u64) -> usize {
        self.delta(b, u, "update", version, r#","patch":{"n":1}"#)
    }

    fn grant(&mut self, kind: &str, b: u32, grantee: u32, permission: &str, by: u32) -> usize {
        let line = format!(
            r#"{{"id":"{}","kind":"{kind}","blob_id":"{}","user_id":"{}","permission":"{permission}","granted_by":"{}","created_at":"{}"}}"#,
            self.id(),
            blob(b),
            user(grantee),
            user(by),
            self.at()
        );
        self.push(line)
    }
}

struct Run {
    report: ReplayReport,
    tables: Tables,
    /// (blob, grantee, permission, granted_by), sorted.
    grants: Vec<(String, String, String, String)>,
    user_depth: Vec<(String, i64)>,
}

fn replay_log(lines: &[Vec<u8>], workers: usize, batch_records: u64) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, join_lines(lines)).expect("write the log");
    let db = dir.path().join("views.sqlite");
    let sink = new_sqlite_views(&db);
    let config = ReplayConfig {
        workers,
        batch_records,
        max_batches_in_flight: 2,
        writer_queue_batches: 2,
        store_records: false,
    };
    let report = replay(
        &[log],
        &config,
        Box::new(sink),
        Arc::new(Progress::default()),
        &Default::default(),
    )
    .expect("replay");
    let (grants, user_depth) = read_access(&db);
    Run {
        report,
        tables: read_tables(&db).expect("read the views"),
        grants,
        user_depth,
    }
}

type GrantRows = Vec<(String, String, String, String)>;

fn read_access(db: &Path) -> (GrantRows, Vec<(String, i64)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(db);
        let mut c = SqliteConnection::connect_with(&options).await.unwrap();
        let grants = sqlx::query_as(
            "SELECT blob_id, user_id, permission, granted_by FROM grants ORDER BY 1, 2, 3",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let depth = sqlx::query_as("SELECT user_id, max_depth FROM user_depth ORDER BY 1")
            .fetch_all(&mut c)
            .await
            .unwrap();
        (grants, depth)
    })
}

/// Replays on 1 and 2 workers, whole and one record per batch; every run must equal
/// the reference model and the others. Returns the first.
fn run(log: &Log) -> Run {
    let expected = model::run(&log.lines);
    let mut first: Option<Run> = None;
    for (workers, batch) in [(1, 1_000), (2, 1), (1, 1), (2, 3)] {
        let ctx = format!("{workers} workers, batch_records {batch}");
        let r = replay_log(&log.lines, workers, batch);
        assert!(r.report.counts_add_up(), "{ctx}: {:?}", r.report);
        assert_eq!(r.tables, expected.tables, "{ctx}: the model");
        assert_eq!(r.report.accepted, expected.counts.accepted, "{ctx}");
        if let Some(f) = &first {
            assert_eq!(r.grants, f.grants, "{ctx}: grants");
            assert_eq!(r.user_depth, f.user_depth, "{ctx}: user_depth");
        }
        first.get_or_insert(r);
    }
    first.expect("ran")
}

/// The reason of the dead letter of the record at `line` (None: not a dead letter).
fn reason_of(r: &Run, log: &Log, line: usize) -> Option<String> {
    let raw = String::from_utf8(log.lines[line].clone()).unwrap();
    r.tables
        .dead_letters
        .iter()
        .find(|d| d.raw == raw)
        .map(|d| d.reason.split(':').next().unwrap().to_owned())
}

fn version_of(r: &Run, b: u32) -> Option<i64> {
    r.tables
        .blobs
        .iter()
        .find(|x| x.blob_id == blob(b))
        .map(|x| x.version)
}

/// S6.1/S6.2/S6.4: owner, a grantee of each permission, a stranger × update,
/// transform, delete, revert. Each case on a blob of its own.
#[test]
fn permission_matrix() {
    let actors = [
        ("owner", OWNER, None),
        ("read", 2, Some("read")),
        ("write", 3, Some("write")),
        ("delete", 4, Some("delete")),
        ("share", 5, Some("share")),
        ("stranger", STRANGER, None),
    ];
    let ops = ["update", "transform", "delete", "revert"];
    let mut log = Log::default();
    let mut cases = Vec::new();
    let mut b = 100;
    for (name, u, permission) in actors {
        for op in ops {
            b += 1;
            log.create(b, OWNER);
            log.update(b, OWNER, 2);
            if let Some(p) = permission {
                log.grant("grant", b, u, p, OWNER);
            }
            let extra = match op {
                "update" => r#","patch":{"x":1}"#,
                "transform" => r#","provider_id":"p","patch":{"x":2}"#,
                "revert" => r#","patch":{"to_version":1}"#,
                _ => "",
            };
            let line = log.delta(b, u, op, 3, extra);
            let allowed = matches!(
                (name, op),
                ("owner", _) | ("write", "update" | "transform" | "revert") | ("delete", "delete")
            );
            cases.push((name, op, b, line, allowed));
        }
    }
    let r = run(&log);
    for (name, op, b, line, allowed) in cases {
        let (reason, version) = (reason_of(&r, &log, line), version_of(&r, b));
        if allowed {
            assert_eq!((reason, version), (None, Some(3)), "{name} {op}");
        } else {
            let want = Some("S6.2 not authorized".to_owned());
            assert_eq!(
                (reason, version),
                (want, Some(2)),
                "{name} {op}: blob unchanged"
            );
        }
    }
    // Every grant of the matrix is live, and counted as accepted.
    assert_eq!(r.grants.len(), 4 * 4);
    // 24 cases: 8 allowed (owner 4, write 3, delete 1), 16 refused.
    assert_eq!(r.report.accepted as usize, log.lines.len() - 16);
}

/// S6.1: who may grant and revoke; S6.4: a grant or revoke takes effect for the
/// records after it.
#[test]
fn grants_follow_log_order_and_who_may_make_them() {
    let mut log = Log::default();
    let early_grant = log.grant("grant", 1, 2, "write", OWNER); // blob 1 not created yet
    log.create(1, OWNER);
    let before = log.update(1, 2, 2); // before any grant: refused
    log.grant("grant", 1, 2, "write", OWNER);
    let after = log.update(1, 2, 2);
    let by_stranger = log.grant("grant", 1, STRANGER, "write", STRANGER);
    let stranger_update = log.update(1, STRANGER, 3);
    // A share holder grants write, but not share.
    log.grant("grant", 1, 5, "share", OWNER);
    log.grant("grant", 1, 6, "write", 5);
    let share_by_sharer = log.grant("grant", 1, 7, "share", 5);
    log.update(1, 6, 3);
    // Revoking the sharer's share keeps the grants they made (docs/access.md).
    log.grant("revoke", 1, 5, "share", OWNER);
    log.update(1, 6, 4);
    let sharer_after_revoke = log.grant("grant", 1, 8, "read", 5);
    // Revoke write: the next update by 2 is refused; the blob stays at 4.
    log.grant("revoke", 1, 2, "write", OWNER);
    let after_revoke = log.update(1, 2, 5);
    // A repeated grant record is a duplicate (S4.2); a malformed one S1.1.
    let line = log.lines[after - 1].clone();
    log.lines.push(line);
    let malformed = log.push(format!(
        r#"{{"id":"{}","kind":"grant","blob_id":"{}","user_id":"{}","permission":"admin","granted_by":"{}","created_at":"{}"}}"#,
        log.id(),
        blob(1),
        user(2),
        user(OWNER),
        log.at()
    ));
    let r = run(&log);
    let s61 = Some("S6.1 not authorized".to_owned());
    let s62 = Some("S6.2 not authorized".to_owned());
    assert_eq!(reason_of(&r, &log, early_grant), s61, "no owner yet");
    assert_eq!(reason_of(&r, &log, before), s62);
    assert_eq!(reason_of(&r, &log, after), None);
    assert_eq!(reason_of(&r, &log, by_stranger), s61);
    assert_eq!(reason_of(&r, &log, stranger_update), s62);
    assert_eq!(
        reason_of(&r, &log, share_by_sharer),
        s61,
        "only the owner grants share"
    );
    assert_eq!(reason_of(&r, &log, sharer_after_revoke), s61);
    assert_eq!(reason_of(&r, &log, after_revoke), s62);
    assert_eq!(
        reason_of(&r, &log, malformed),
        Some("S1.1 malformed".to_owned())
    );
    assert_eq!(r.report.duplicates, 1);
    assert_eq!(version_of(&r, 1), Some(4));
    // Live: 6's write (granted by the sharer 5, kept after 5 lost share).
    assert_eq!(
        r.grants,
        vec![(blob(1), user(6), "write".into(), user(5))],
        "the grants view"
    );
}

/// S6.4: an edge needs read on its other end when that blob exists; derived blobs
/// across owners need a grant, and user_depth is kept per owner.
#[test]
fn edges_across_owners_need_read() {
    let mut log = Log::default();
    log.create(1, OWNER);
    // User 2 derives from blob 1 without read: refused, so blob 2 does not exist.
    let refused = log.delta(2, 2, "create", 1, &format!(r#","parent_id":"{}""#, blob(1)));
    log.grant("grant", 1, 2, "read", OWNER);
    let derived = log.delta(3, 2, "create", 1, &format!(r#","parent_id":"{}""#, blob(1)));
    // An edge to a blob that does not exist yet needs nothing (S5.1 announces it);
    // one to the stranger's existing blob needs read on it.
    log.create(9, STRANGER);
    let announce = log.delta(
        3,
        2,
        "update",
        2,
        &format!(r#","patch":{{}},"child_ids":["{}"]"#, blob(4)),
    );
    let to_stranger = log.delta(
        3,
        2,
        "update",
        3,
        &format!(r#","patch":{{}},"child_ids":["{}"]"#, blob(9)),
    );
    log.create(4, 2);
    let r = run(&log);
    assert_eq!(
        reason_of(&r, &log, refused),
        Some("S6.2 not authorized".into())
    );
    assert_eq!(version_of(&r, 2), None);
    assert_eq!(reason_of(&r, &log, derived), None);
    assert_eq!(reason_of(&r, &log, announce), None);
    assert_eq!(
        reason_of(&r, &log, to_stranger),
        Some("S6.2 not authorized".into())
    );
    // user 2's blob 4 is at depth 2 (1 -> 3 -> 4), the owner's blob 1 at depth 0.
    assert_eq!(
        r.user_depth,
        vec![(user(OWNER), 0), (user(2), 2), (user(STRANGER), 0)]
    );
}

/// S6.2: a provider's output acts as the user whose delta triggered it (the request
/// carries that user, `connectors/providers/src/output.rs` writes it as the output's
/// `user_id`): once that user's write grant is revoked, the output is refused.
#[test]
fn a_provider_output_after_the_users_revoke_is_refused() {
    let mut log = Log::default();
    log.create(1, OWNER);
    log.grant("grant", 1, 2, "write", OWNER);
    log.update(1, 2, 2); // triggers a request on behalf of user 2
    let in_time = log.delta(
        1,
        2,
        "transform",
        3,
        r#","provider_id":"p","patch":{"a":1}"#,
    );
    log.update(1, 2, 4);
    log.grant("revoke", 1, 2, "write", OWNER);
    let late = log.delta(
        1,
        2,
        "transform",
        5,
        r#","provider_id":"p","patch":{"a":2}"#,
    );
    let r = run(&log);
    assert_eq!(reason_of(&r, &log, in_time), None);
    assert_eq!(
        reason_of(&r, &log, late),
        Some("S6.2 not authorized".into())
    );
    assert_eq!(version_of(&r, 1), Some(4));
}

/// A delta that arrives before its blob's create waits, and is judged when the create
/// comes: the creator's own pass, another user's are refused; never created, it is a
/// version gap (S4.4) as before.
#[test]
fn deltas_before_the_create_are_judged_at_the_create() {
    let mut log = Log::default();
    let own = log.update(1, OWNER, 2);
    let other = log.update(1, 2, 3);
    log.create(1, OWNER);
    let orphan = log.update(7, OWNER, 2);
    let r = run(&log);
    assert_eq!(reason_of(&r, &log, own), None);
    assert_eq!(
        reason_of(&r, &log, other),
        Some("S6.2 not authorized".into())
    );
    assert_eq!(reason_of(&r, &log, orphan), Some("S4.4 version gap".into()));
    assert_eq!(version_of(&r, 1), Some(2));
}

/// S6.3 for analysts on Postgres: row-level security. A role that is not the tables'
/// owner and sets `studio.user_id` sees only rows of blobs that user may read.
#[test]
fn postgres_row_security_shows_an_analyst_only_readable_rows() {
    use studio_connectors::postgres::{PgOptions, PgViews};
    use studio_tests::services::{fresh_database, pg_execute, unique_name};

    let mut log = Log::default();
    log.create(1, OWNER);
    log.create(2, OWNER);
    log.create(3, 2);
    log.delta(
        4,
        OWNER,
        "create",
        1,
        &format!(r#","parent_id":"{}""#, blob(1)),
    );
    log.grant("grant", 1, 2, "read", OWNER);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    std::fs::write(&path, join_lines(&log.lines)).unwrap();
    let url = fresh_database("rls");
    let sink = PgViews::open(PgOptions {
        url: url.clone(),
        mode: OpenMode::Rebuild,
        rows_per_statement: 500,
        timeout: std::time::Duration::from_secs(20),
        content: ContentSpec::in_dir(dir.path().join("large")),
        retry: RetryPolicy::default(),
    })
    .expect("open the Postgres views");
    let config = ReplayConfig {
        workers: 1,
        batch_records: 1000,
        max_batches_in_flight: 2,
        writer_queue_batches: 2,
        store_records: true,
    };
    let progress = Arc::new(Progress::default());
    replay(
        &[path],
        &config,
        Box::new(sink),
        progress,
        &Default::default(),
    )
    .expect("replay");

    let role = unique_name("analyst");
    pg_execute(
        &url,
        &format!(
            "CREATE ROLE {role}; GRANT USAGE ON SCHEMA public TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
        ),
    );
    let ask = |who: Option<u32>, sql: &str| -> Vec<String> {
        let set = who.map_or(String::new(), |u| {
            format!("SET studio.user_id = '{}';", user(u))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {role}; {set}")))
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&mut c)
                .await
                .unwrap()
        })
    };
    let blobs = "SELECT blob_id::text FROM blobs ORDER BY 1";
    let all: Vec<String> = [1, 2, 3, 4].map(blob).to_vec();
    // The owner of the tables (Studio's own role) is not subject to the policies.
    assert_eq!(studio_tests::services::pg_texts(&url, blobs), all);
    assert_eq!(ask(Some(OWNER), blobs), [1, 2, 4].map(blob).to_vec());
    assert_eq!(
        ask(Some(2), blobs),
        [1, 3].map(blob).to_vec(),
        "its own and the read grant"
    );
    assert!(ask(Some(STRANGER), blobs).is_empty());
    assert!(ask(None, blobs).is_empty(), "no user set: nothing");
    // The other views follow: deltas, edges (both ends readable), grants, depth.
    let deltas = "SELECT blob_id::text FROM deltas_applied ORDER BY 1";
    assert_eq!(ask(Some(2), deltas), [1, 3].map(blob).to_vec());
    let edges = "SELECT child_id::text FROM blob_edges";
    assert_eq!(ask(Some(OWNER), edges), vec![blob(4)]);
    assert!(ask(Some(2), edges).is_empty(), "user 2 may not read blob 4");
    let grants = "SELECT user_id::text FROM grants";
    assert_eq!(ask(Some(2), grants), vec![user(2)]);
    assert!(ask(Some(STRANGER), grants).is_empty());
    // A month's partition of the delta store shows nothing around the policies.
    let partition = "SELECT blob_id::text FROM deltas_y2026m01";
    assert_eq!(studio_tests::services::pg_texts(&url, partition).len(), 4);
    assert!(ask(Some(OWNER), partition).is_empty());
    let depth = "SELECT user_id::text FROM user_depth";
    assert_eq!(ask(Some(2), depth), vec![user(2)]);
}
