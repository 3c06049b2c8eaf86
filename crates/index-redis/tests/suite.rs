//! The generic store suite, run against a 3-master Redis Cluster on loopback ports.
//!
//! One cluster serves the whole test binary; every fixture gets a fresh key prefix, so
//! stores never see each other's keys. Few buckets (16) make keys share buckets, as a
//! large catalogue does.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use index::testsuite::Fixture;
use index_redis::RedisStore;
use index_redis::testcluster::TestCluster;

fn cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| TestCluster::start(3, 0).expect("start a 3-master cluster"))
}

fn make_fixture() -> Fixture {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let url = cluster().url(&format!(
        "prefix=suite{}-{n}&buckets=4&durable=0",
        std::process::id()
    ));
    Fixture::new(RedisStore::open(&url, "test params").expect("open store"))
}

index::store_test_suite!(make_fixture);
