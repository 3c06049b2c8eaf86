//! Long work (indexing uploads, scans) runs as a job: the request that starts it gets the
//! job's id at once (202), and the client polls the job for progress and the result.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Jobs kept for polling; the oldest finished ones are forgotten beyond this.
const MAX_KEPT_JOBS: usize = 200;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

/// A job as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: u64,
    /// What the job does, e.g. `index`.
    pub kind: &'static str,
    pub state: JobState,
    /// Items finished (files indexed, tracks scanned) out of `total`.
    pub done: usize,
    pub total: usize,
    pub created_unix_s: u64,
    /// What the job produced, once done (its shape depends on `kind`).
    pub result: Option<serde_json::Value>,
    /// Why the job failed as a whole.
    pub error: Option<String>,
}

impl Job {
    fn finished(&self) -> bool {
        matches!(self.state, JobState::Done | JobState::Failed)
    }
}

/// Every job of this server process, by id.
#[derive(Default)]
pub struct Jobs {
    next_id: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Job>>,
}

impl Jobs {
    /// Registers a queued job of `total` items and returns its id.
    pub fn create(&self, kind: &'static str, total: usize) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Job {
            id,
            kind,
            state: JobState::Queued,
            done: 0,
            total,
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            result: None,
            error: None,
        };
        let mut jobs = self.lock();
        jobs.insert(id, job);
        // Forget the oldest finished jobs; unfinished ones are always kept.
        while jobs.len() > MAX_KEPT_JOBS {
            let Some(old) = jobs.values().find(|j| j.finished()).map(|j| j.id) else {
                break;
            };
            jobs.remove(&old);
        }
        id
    }

    /// Changes a job (if it is still kept).
    pub fn update(&self, id: u64, change: impl FnOnce(&mut Job)) {
        if let Some(job) = self.lock().get_mut(&id) {
            change(job);
        }
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        self.lock().get(&id).cloned()
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<Job> {
        self.lock().values().rev().cloned().collect()
    }

    /// Jobs not finished yet.
    pub fn n_unfinished(&self) -> usize {
        self.lock().values().filter(|j| !j.finished()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Job>> {
        // A panic while holding the lock leaves whole jobs behind (every change is one
        // assignment), so the map is still usable.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_jobs_are_forgotten_oldest_first_and_running_ones_never() {
        let jobs = Jobs::default();
        let running = jobs.create("index", 1);
        jobs.update(running, |j| j.state = JobState::Running);
        let first_done = jobs.create("index", 1);
        jobs.update(first_done, |j| j.state = JobState::Done);
        for _ in 0..MAX_KEPT_JOBS {
            let id = jobs.create("index", 1);
            jobs.update(id, |j| j.state = JobState::Done);
        }
        assert!(jobs.get(running).is_some());
        assert!(jobs.get(first_done).is_none());
        assert_eq!(jobs.list().len(), MAX_KEPT_JOBS);
        assert_eq!(jobs.n_unfinished(), 1);
    }
}
