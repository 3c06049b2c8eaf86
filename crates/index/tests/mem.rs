//! Runs the shared store suite against the in-memory backend.

use index::MemStore;
use index::testsuite::Fixture;

index::store_test_suite!(|| Fixture::new(MemStore::new("test-params")));
