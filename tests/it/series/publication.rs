//! Publication: the document replaced by a rename of a complete file, never written in
//! place; no temporary file left on any path; nothing published for a deleted series.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use super::*;

#[tokio::test]
async fn a_rebuild_renames_a_complete_file_over_the_document_and_never_writes_it_in_place() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the first build", || async {
        series.builds(&env).await == 1
    })
    .await;
    let path = series.document();
    // A reader of the first document, with the file open.
    let mut reader = std::fs::File::open(&path).expect("open the document");
    let first_file = reader.metadata().expect("metadata").ino();
    let first = std::fs::read(&path).expect("the first document");

    // The next build, held on a FIFO in the middle of reading the instance files.
    let fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops[..1]).await;
    wait_for("the rebuild to hold the lock", || async {
        env.get(&keys::series_lock_owner(&series.tenant, &series.series))
            .await
            .is_some()
    })
    .await;
    // Past its first queries, reading the files: held on the FIFO.
    fifo.wait_for_reader().await;
    assert_eq!(
        std::fs::read(&path).expect("the document during the rebuild"),
        first,
        "while the rebuild runs, the path names the first document, whole"
    );
    fifo.feed().await;
    wait_for("the rebuild", || async { series.builds(&env).await == 2 }).await;
    daemon.stop().await;

    // Written in place (truncated, then filled), the path would name the same file; renamed
    // over it, a new one that was complete before it got the name.
    let second_file = std::fs::metadata(&path).expect("metadata").ino();
    assert_ne!(
        second_file, first_file,
        "the rebuild renamed a new file over the document"
    );
    let mut held = Vec::new();
    reader.read_to_end(&mut held).expect("read the open file");
    assert_eq!(
        held, first,
        "a reader that opened the old document reads it whole"
    );
    assert_eq!(read_document(&path).len(), 3);
    assert_eq!(temporaries(&path), 0, "no temporary file left");
}

#[tokio::test]
async fn a_build_that_lost_its_lock_publishes_nothing_and_removes_its_temporary_file() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    // The checks before the rename wait for the table below for as long as this test needs.
    env.settings.database.statement_timeout_ms = 60_000;
    env.settings.stream.claim_idle_ms = 120_000;
    env.settings.stream.stale_consumer_ms = 240_000;
    let (fifo, daemon) = series.start_held_build(&env).await;
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
    // Past its first queries, reading the files: held on the FIFO.
    fifo.wait_for_reader().await;
    // The build goes on to write its temporary file, then waits for the table in its checks
    // before the rename.
    let hold = env.lock_state_table().await;
    fifo.feed().await;
    let document = series.document();
    wait_for("the temporary file", || async {
        temporaries(&document) == 1
    })
    .await;

    // The lease "runs out" and another worker takes the lock: its own token, the same lease.
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&lock_key)
        .arg("1")
        .arg("PX")
        .arg(30_000)
        .cmd("SET")
        .arg(&owner_key)
        .arg("another-worker")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut env.redis.clone())
        .await
        .expect("take the lock over");
    hold.rollback().await.expect("release the table");

    // Its checks now find the lock another's (the row is there, the query has no reason to
    // fail): the lost-lock path, which removes the temporary file.
    wait_for("the temporary file to be removed", || async {
        temporaries(&document) == 0
    })
    .await;
    daemon.stop().await;
    assert!(!document.exists(), "nothing published without the lock");
    assert_eq!(
        env.get(&owner_key).await.as_deref(),
        Some("another-worker"),
        "the new holder keeps its lock"
    );
    assert_eq!(
        series.builds(&env).await,
        0,
        "no status recorded for a lost build"
    );
}

#[tokio::test]
async fn a_redis_failure_before_the_rename_leaves_no_temporary_file() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let (fifo, daemon) = series.start_held_build(&env).await;
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
    // Past its first queries, reading the files: held on the FIFO.
    fifo.wait_for_reader().await;
    // The owner key turns into a hash: the lock check before the rename fails with
    // WRONGTYPE, a Redis error like any other.
    let _: () = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(&owner_key)
        .cmd("HSET")
        .arg(&owner_key)
        .arg("not")
        .arg("a token")
        .query_async(&mut env.redis.clone())
        .await
        .expect("owner key of the wrong type");
    // The table held, so the build waits between writing its temporary file and the checks.
    let hold = env.lock_state_table().await;
    fifo.feed().await;
    let document = series.document();
    wait_for("the temporary file", || async {
        temporaries(&document) == 1
    })
    .await;
    hold.rollback().await.expect("release the table");

    wait_for("the temporary file to be removed", || async {
        temporaries(&document) == 0
    })
    .await;
    daemon.stop().await;
    assert!(!series.document().exists(), "nothing published");
}

#[tokio::test]
async fn a_series_deleted_during_its_build_is_not_published() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let (fifo, daemon) = series.start_held_build(&env).await;
    // Past its first queries, reading the files: held on the FIFO.
    fifo.wait_for_reader().await;
    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(series.tenant.as_str())
        .bind(series.study.as_str())
        .execute(&env.db)
        .await
        .expect("delete the study");
    fifo.feed().await;

    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert!(
        !series.document().exists(),
        "no document for a deleted study"
    );
    assert_eq!(series.builds(&env).await, 0);
}

#[tokio::test]
async fn stale_temporary_documents_are_swept_at_start_and_nothing_else() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 1).await;
    let folder = series
        .document()
        .parent()
        .map(Path::to_path_buf)
        .expect("folder");
    std::fs::create_dir_all(&folder).expect("study folder");
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3_600);
    let file = |name: String, old: bool| {
        let path = folder.join(name);
        let file = std::fs::File::create(&path).expect("create");
        if old {
            file.set_modified(hours_ago).expect("age it");
        }
        path
    };
    let stale = file(
        format!(".{}.json.00000000deadbeef.tmp", series.series),
        true,
    );
    let fresh = file(
        format!(".{}.json.00000000feedf00d.tmp", series.series),
        false,
    );
    let foreign = file(".backup.00000000deadbeef.tmp".to_owned(), true);
    let document = file(format!("{}.9.json", series.series), true);
    let daemon = env.start_daemon();
    wait_for("the stale temporary file to be swept", || async {
        !stale.exists()
    })
    .await;
    daemon.stop().await;
    for kept in [&fresh, &foreign, &document] {
        assert!(kept.exists(), "{} kept", kept.display());
    }
}
