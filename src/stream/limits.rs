//! Stream caps: per user (429) and per process (503). A permit is taken before any database
//! work and released when the stream's guard drops, however the stream ends.

use super::OpenError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) struct StreamLimiter {
    per_user: usize,
    global: usize,
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_user: HashMap<i64, usize>,
}

impl StreamLimiter {
    pub(crate) fn new(per_user: usize, global: usize) -> Arc<Self> {
        Arc::new(StreamLimiter {
            per_user,
            global,
            open: Mutex::new(Counts::default()),
        })
    }

    pub(crate) fn acquire(self: &Arc<Self>, user_id: i64) -> Result<StreamPermit, OpenError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.global {
            return Err(OpenError::Overloaded);
        }
        let mine = open.by_user.entry(user_id).or_default();
        if *mine >= self.per_user {
            return Err(OpenError::TooManyStreams);
        }
        *mine += 1;
        open.total += 1;
        Ok(StreamPermit {
            limiter: Arc::clone(self),
            user_id,
        })
    }
}

pub(crate) struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    user_id: i64,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_user.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                open.by_user.remove(&self.user_id);
            }
        }
    }
}
