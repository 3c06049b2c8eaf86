//! Mistakes a user makes: exit codes and messages that name what is wrong.

use crate::util::{TestDir, cratedigger};

#[test]
fn identify_without_a_store_exits_2_naming_the_store() {
    let dir = TestDir::new();
    let db = dir.join("no store here");
    let query = dir.join("song.mp3");
    let out = cratedigger(&db, ["identify".as_ref(), query.as_os_str()]);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&db.display().to_string()),
        "the message does not name {}:\n{out:?}",
        db.display()
    );
    assert!(!db.exists(), "identify created a store");
}

#[test]
fn list_and_stats_without_a_store_exit_2() {
    let dir = TestDir::new();
    let db = dir.join("missing");
    for cmd in ["list", "stats"] {
        let out = cratedigger(&db, [cmd]);
        out.expect_code(2);
        assert!(out.stderr.contains(&db.display().to_string()), "{out:?}");
    }
    assert!(!db.exists(), "list or stats created a store");
}

#[test]
fn identify_of_a_missing_query_file_exits_1_naming_it() {
    let dir = TestDir::new();
    let db = dir.db();
    // An empty store: index an empty folder.
    let empty = dir.mkdir("empty");
    cratedigger(&db, ["index".as_ref(), "-q".as_ref(), empty.as_os_str()]).expect_code(0);
    let query = dir.join("not-there.mp3");
    let out = cratedigger(&db, ["identify".as_ref(), query.as_os_str()]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("not-there.mp3"),
        "the message does not name the query:\n{out:?}"
    );
}
