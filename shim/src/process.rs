//! What every process of a task has, the init or an exec: a status, an
//! exit once it has one, and the feed of its stdin.

use crate::stdio::StdinFeed;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

pub struct ProcessState {
    state: Mutex<(Status, Option<Exit>)>,
    exited: Condvar,
    stdin_feed: Mutex<Option<StdinFeed>>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessState {
    pub fn new(stdin_feed: Option<StdinFeed>) -> Self {
        ProcessState {
            state: Mutex::new((Status::Created, None)),
            exited: Condvar::new(),
            stdin_feed: Mutex::new(stdin_feed),
        }
    }

    pub fn status(&self) -> (Status, Option<Exit>) {
        *lock(&self.state)
    }

    pub fn set_status(&self, status: Status) {
        let mut state = lock(&self.state);
        if state.0 != Status::Stopped {
            state.0 = status;
        }
    }

    pub fn set_stdin(&self, feed: Option<StdinFeed>) {
        *lock(&self.stdin_feed) = feed;
    }

    /// Records the exit; returns false if it was already recorded.
    pub fn set_exited(&self, code: u32) -> bool {
        let mut state = lock(&self.state);
        if state.1.is_some() {
            return false;
        }
        *state = (
            Status::Stopped,
            Some(Exit {
                code,
                at: SystemTime::now(),
            }),
        );
        self.exited.notify_all();
        drop(state);
        self.close_stdin();
        true
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut state = lock(&self.state);
        loop {
            if let Some(exit) = state.1 {
                return exit;
            }
            state = self
                .exited
                .wait_timeout(state, Duration::from_secs(3600))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Waits at most `timeout` for the exit to be recorded.
    pub fn wait_for(&self, timeout: Duration) -> Option<Exit> {
        let state = lock(&self.state);
        let (state, _) = self
            .exited
            .wait_timeout_while(state, timeout, |s| s.1.is_none())
            .unwrap_or_else(|p| p.into_inner());
        state.1
    }

    pub fn close_stdin(&self) {
        if let Some(mut feed) = lock(&self.stdin_feed).take() {
            feed.close();
        }
    }
}
