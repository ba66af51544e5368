//! The README's Redis ACL rule, read from the README as printed and applied with `ACL
//! SETUSER` on a private redis-server, is enough for every path of the daemon: dead letters,
//! entries whose study never appears, reclaiming, deleting gone consumers, series documents
//! with their Redis copy, second looks, and the key set with its TTL extension. Without a
//! command it needs, the daemon dead-letters nothing: it retries, `/readyz` names the
//! refusal, and it carries on once the operator grants the command, without a restart.

use dicom_cache_warmer::{Cached, Outcome, Refresher, ServiceUrl, command_pool, keys};
use dicom_cache_warmer::{ReadMode, ensure_group, read_new};
use redis::aio::MultiplexedConnection;

use crate::chaos_support::{PrivateRedis, Replica, free_port};
use crate::endpoint::get;
use crate::helpers::{TestEnv, wait_for};
use crate::jwks::{KEY_SET, Reply, TestIdp, expire, get_bytes, refresh, ttl};
use crate::series::SeriesFixture;

/// The user the README's rule is written for.
pub(crate) const ACL_USER: &str = "dicom-cache-warmer";
/// What the README writes in place of the password.
const PASSWORD_PLACEHOLDER: &str = ">PASSWORD";
/// The password the tests give that user.
const PASSWORD: &str = "warmer-secret";

/// The rules of `ACL SETUSER dicom-cache-warmer …`, as the README prints them.
pub(crate) struct AclRule {
    rules: Vec<String>,
}

impl AclRule {
    /// Reads the rule from README.md: the words after `ACL SETUSER dicom-cache-warmer`, up
    /// to the line that closes its ```text block.
    pub(crate) fn from_readme() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("read README.md");
        let command = format!("ACL SETUSER {ACL_USER} ");
        let lines: Vec<&str> = readme.lines().collect();
        let starts: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains(&command))
            .collect();
        let [start] = starts[..] else {
            panic!(
                "README.md prints `{command}` {} times, not once",
                starts.len()
            );
        };
        assert_eq!(
            lines[..start]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim()),
            Some("```text"),
            "the rule opens a ```text block"
        );
        let (_, first) = lines[start]
            .split_once(&command)
            .expect("the line holds the command");
        let mut rules: Vec<String> = first.split_whitespace().map(str::to_owned).collect();
        let mut closed = false;
        for line in &lines[start + 1..] {
            if line.trim_start().starts_with("```") {
                closed = true;
                break;
            }
            rules.extend(line.split_whitespace().map(str::to_owned));
        }
        assert!(closed, "the rule's ```text block is closed");
        assert_eq!(
            rules.iter().filter(|r| *r == PASSWORD_PLACEHOLDER).count(),
            1,
            "the rule sets the password once, as {PASSWORD_PLACEHOLDER}: {rules:?}"
        );
        Self { rules }
    }

    /// The same rule without `rule` (such as `+xrange`), which it must hold.
    pub(crate) fn without(mut self, rule: &str) -> Self {
        let before = self.rules.len();
        self.rules.retain(|r| r != rule);
        assert_eq!(before - self.rules.len(), 1, "the rule holds {rule} once");
        self
    }

    /// Creates the user with this rule, `>PASSWORD` replaced by `password` and nothing else
    /// changed, over an admin connection.
    pub(crate) async fn apply(&self, admin: &mut MultiplexedConnection, password: &str) {
        let rules = self.rules.iter().map(|rule| {
            if rule == PASSWORD_PLACEHOLDER {
                format!(">{password}")
            } else {
                rule.clone()
            }
        });
        let mut command = redis::cmd("ACL");
        command.arg("SETUSER").arg(ACL_USER);
        for rule in rules {
            command.arg(rule);
        }
        let _: () = command
            .query_async(admin)
            .await
            .unwrap_or_else(|e| panic!("ACL SETUSER with the README's rule: {e}"));
    }
}

/// Points `env`'s stream and dead-letter stream at names the README's rule covers
/// (`~dicom:ingest*`), so that its key patterns are tested too.
pub(crate) fn use_readme_stream_names(env: &mut TestEnv) {
    env.settings.stream.key = format!("dicom:ingest:{}", env.tenant_prefix);
    env.settings.stream.dead_letter_key = format!("dicom:ingest:{}:dead", env.tenant_prefix);
    env.settings.validate().expect("valid settings");
}

/// A private redis-server whose `dicom-cache-warmer` user has `rule` (its default user
/// stays the admin), with `env` moved onto it: the test's own calls (`env.redis`) as admin,
/// the daemon's (`env.settings.redis`) as that user, the stream under `dicom:ingest:`.
async fn redis_with_acl_user(env: &mut TestEnv, rule: &AclRule) -> PrivateRedis {
    let redis = PrivateRedis::start().await;
    let mut admin = redis.connection().await;
    rule.apply(&mut admin, PASSWORD).await;
    env.redis = admin;
    env.settings.redis.url = ServiceUrl::from(acl_user_url(&redis).as_str());
    use_readme_stream_names(env);
    redis
}

fn acl_user_url(redis: &PrivateRedis) -> String {
    format!("redis://{ACL_USER}:{PASSWORD}@127.0.0.1:{}", redis.port)
}

/// Adds an entry to the test's stream; returns its id.
async fn publish(env: &TestEnv, fields: &[(&str, &str)]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(&env.settings.stream.key).arg("*");
    for (name, value) in fields {
        command.arg(name).arg(value);
    }
    command
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD")
}

/// The dead-letter stream as (source entry id, reason, deliveries), sorted.
async fn dead_letters(env: &TestEnv) -> Vec<(String, String, String)> {
    let mut letters: Vec<_> = env
        .dead_letters()
        .await
        .iter()
        .map(|fields| {
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| panic!("dead letter without {name}: {fields:?}"))
            };
            (
                field("dead_source_id"),
                field("dead_reason"),
                field("dead_deliveries"),
            )
        })
        .collect();
    letters.sort();
    letters
}

/// A dead letter as [`dead_letters`] lists it.
fn letter(source: &str, reason: &str, deliveries: u64) -> (String, String, String) {
    (source.to_owned(), reason.to_owned(), deliveries.to_string())
}

async fn stream_length(env: &TestEnv, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut env.redis.clone())
        .await
        .expect("XLEN")
}

#[tokio::test]
async fn the_daemon_does_all_its_work_as_the_readme_acl_user() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    env.settings.stream.max_deliveries = 2;
    // Second looks 200 ms, 1 s and 6 s after each fill.
    env.settings.cache.recheck_ms = 200;
    let _redis = redis_with_acl_user(&mut env, &AclRule::from_readme()).await;
    // Series documents with their Redis copy, from real instance files.
    let series = SeriesFixture::new(&mut env, 4).await;
    assert!(env.settings.series.redis_copy);
    let tenant = series.tenant.as_str().to_owned();

    // A consumer that read the series' events and died before acknowledging any: the
    // daemon must claim them, then delete it.
    series.publish(&env, &series.sops).await;
    let mut admin = env.redis.clone();
    let mut ghost = env.settings.stream.clone();
    ghost.consumer = format!("{}-ghost", ghost.consumer);
    ghost.batch_size = 10_000;
    ensure_group(&mut admin, &ghost).await.expect("group");
    let taken = read_new(&mut admin, &ghost, ReadMode::Wait)
        .await
        .expect("ghost reads");
    assert_eq!(taken.len(), series.sops.len());

    // New entries: a bad one, one whose study never appears, one more of the series.
    let bad = publish(&env, &[("tenant_id", &tenant)]).await;
    let never = publish(&env, &[("tenant_id", &tenant), ("study_uid", "1.2.3.999")]).await;
    series.publish(&env, &series.sops[..1]).await;
    let published = series.sops.len() + 3;

    let daemon = env.start_daemon();
    wait_for("both dead letters", || async {
        dead_letters(&env).await.len() >= 2
    })
    .await;
    let copy_key = keys::series_metadata(&series.tenant, &series.series);
    wait_for("the series document and its Redis copy", || async {
        series.document().exists() && env.get(&copy_key).await.is_some()
    })
    .await;
    wait_for("the ghost consumer to be deleted", || async {
        !env.consumers().await.contains(&ghost.consumer)
    })
    .await;
    env.wait_until_drained().await;
    // A negative flag the server sets after the fills: a second look removes it.
    let flag = keys::study_negative_flag(&series.tenant, &series.study);
    let _: () = redis::cmd("SET")
        .arg(&flag)
        .arg("1")
        .arg("EX")
        .arg(300)
        .query_async(&mut admin)
        .await
        .expect("SET");
    wait_for("a second look to remove the negative flag", || async {
        env.get(&flag).await.is_none()
    })
    .await;
    daemon.stop().await;

    let mut expected = vec![
        letter(&bad, "missing field study_uid", 1),
        letter(&never, "study not in the database after 2 deliveries", 2),
    ];
    expected.sort();
    assert_eq!(dead_letters(&env).await, expected, "exactly these two");
    // Drained: every entry was delivered and none is pending, so the others were acknowledged.
    assert_eq!(
        stream_length(&env, &env.settings.stream.key).await,
        published
    );
    let backlog = env.backlog().await;
    assert_eq!((backlog.pending, backlog.lag), (0, Some(0)));
    assert!(
        env.get(&keys::study_metadata(&series.tenant, &series.study))
            .await
            .is_some(),
        "the study key is filled"
    );
    assert_eq!(
        env.get(&copy_key).await.map(String::into_bytes),
        Some(std::fs::read(series.document()).expect("read the document")),
        "the Redis copy is the document"
    );
    assert_eq!(
        env.consumers().await,
        [env.settings.stream.consumer.clone()],
        "only the live consumer stays"
    );
}

#[tokio::test]
async fn the_key_set_is_written_and_kept_alive_as_the_readme_acl_user() {
    let mut env = TestEnv::new().await;
    let _redis = redis_with_acl_user(&mut env, &AclRule::from_readme()).await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    let settings = idp.settings("/jwks", true);
    let full = settings.ttl_secs;
    let key = format!("jwksurl:{}", env.tenant_prefix);
    let pool = command_pool(&env.settings.redis).expect("pool");
    let refresher = Refresher::new(&settings, pool)
        .expect("refresher")
        .expect("jwks.url is set")
        .with_key(&key);

    assert!(matches!(refresh(&refresher).await, Outcome::Written(_)));
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(KEY_SET.as_bytes())
    );

    // The provider is down and the key set nears its end: the refresher extends it.
    idp.reply_with(Reply::Status(503));
    expire(&env.redis, &key, 100).await;
    let outcome = refresh(&refresher).await;
    let Outcome::Kept {
        cached, age_secs, ..
    } = &outcome
    else {
        panic!("the key set is kept: {outcome:?}");
    };
    assert_eq!(
        *cached,
        Cached::Expiring {
            remaining_secs: full,
            extended: true
        }
    );
    assert!(age_secs.is_some_and(|age| age < 60), "{age_secs:?}");
    assert!(ttl(&env.redis, &key).await > full as i64 - 5);
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(KEY_SET.as_bytes())
    );
}

/// The value of `dcw_connection_errors_total{service="redis"}` on the daemon's endpoint.
async fn redis_errors(port: u16) -> Option<f64> {
    let (_, body) = get(port, "/metrics").await?;
    body.lines().find_map(|line| {
        line.strip_prefix("dcw_connection_errors_total{service=\"redis\"} ")?
            .parse()
            .ok()
    })
}

/// True when `text` names Redis' `NOPERM` refusal of XRANGE (redis-rs spells the code
/// `NoPerm`).
fn names_the_refusal(text: &str) -> bool {
    let text = text.to_lowercase();
    text.contains("noperm") && text.contains("'xrange'")
}

#[tokio::test]
async fn a_missing_permission_dead_letters_nothing_and_is_named_until_granted() {
    let mut env = TestEnv::new().await;
    let _redis = redis_with_acl_user(&mut env, &AclRule::from_readme().without("+xrange")).await;
    let tenant = format!("{}0", env.tenant_prefix);
    // A study that never appears: after max_deliveries the daemon reads the entry back
    // (XRANGE) to dead-letter it, which this user may not do.
    let never = publish(&env, &[("tenant_id", &tenant), ("study_uid", "1.2.3.999")]).await;
    let port = free_port();
    let replica = Replica::start(
        &env,
        &[
            (
                "DCW__REDIS__URL",
                env.settings.redis.url.expose().to_owned(),
            ),
            ("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            ("DCW__STREAM__MAX_DELIVERIES", "2".to_owned()),
        ],
    )
    .await;

    wait_for("/readyz to name the refused command", || async {
        get(port, "/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && names_the_refusal(&body))
    })
    .await;
    // Retried, not given up on: the refusal keeps coming, and each time the entry stays.
    let seen = redis_errors(port).await.expect("the error counter");
    wait_for("two more refused tries", || async {
        redis_errors(port).await.is_some_and(|n| n >= seen + 2.0)
    })
    .await;
    assert_eq!(
        stream_length(&env, &env.settings.stream.dead_letter_key).await,
        0,
        "nothing is dead-lettered for a permission fault"
    );
    assert_eq!(env.backlog().await.pending, 1, "the entry stays pending");
    let (status, body) = get(port, "/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: the work in hand fails: redis:") && names_the_refusal(&body),
        "{body}"
    );
    assert_eq!(
        get(port, "/healthz").await,
        Some((200, "live\n".to_owned())),
        "the process is alive: restarting it would not help"
    );
    assert!(
        replica
            .figures()
            .warnings
            .iter()
            .any(|w| names_the_refusal(w) && w.contains("entries stay pending")),
        "{:?}",
        replica.figures().warnings
    );

    // The operator grants the command; the same process carries on.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(ACL_USER)
        .arg("+xrange")
        .query_async(&mut env.redis.clone())
        .await
        .expect("grant +xrange");
    wait_for("the entry to be dead-lettered", || async {
        !dead_letters(&env).await.is_empty()
    })
    .await;
    assert_eq!(
        dead_letters(&env).await,
        [letter(
            &never,
            "study not in the database after 2 deliveries",
            2
        )]
    );
    env.wait_until_drained().await;
    wait_for("/readyz to return to 200", || async {
        get(port, "/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    let figures = replica.stop().await;
    assert_eq!(figures.dead_lettered, 1);
}
