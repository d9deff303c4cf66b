//! A cloneable token to stop a run gracefully.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Asks a run to stop gracefully: no new line starts, lines in progress
/// finish, the checkpoint is synced, and the report says the run stopped
/// early. Clones share the same flag; fire it from a signal handler thread,
/// another thread, or a task.
///
/// # Examples
///
/// ```
/// use linemark::StopToken;
///
/// let token = StopToken::new();
/// let for_handler = token.clone();
/// assert!(!token.is_stopped());
/// for_handler.stop();
/// assert!(token.is_stopped());
/// ```
#[derive(Clone, Debug, Default)]
pub struct StopToken {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stopped: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Tokens that fire with this one (see [`StopToken::child`]).
    children: Mutex<Vec<Weak<Inner>>>,
    /// Wakes the futures waiting in [`StopToken::stopped`].
    #[cfg(feature = "tokio")]
    notify: tokio::sync::Notify,
}

impl StopToken {
    /// A token that has not fired.
    #[must_use]
    pub fn new() -> StopToken {
        StopToken::default()
    }

    /// Fires the token. Waits in progress (retry backoff) end at once.
    pub fn stop(&self) {
        self.inner.stop();
    }

    /// A token that fires when this one does, and can also fire alone: a
    /// run's own stop, which the user's token, a halt and the end of the
    /// run all fire, so that one wait ends with any of them.
    pub(crate) fn child(&self) -> StopToken {
        let child = StopToken::new();
        let mut children = self
            .inner
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        children.retain(|weak| weak.strong_count() > 0);
        children.push(Arc::downgrade(&child.inner));
        drop(children);
        // Fired before the child was linked: the child fires too.
        if self.is_stopped() {
            child.stop();
        }
        child
    }

    /// Whether the token has fired.
    #[must_use]
    #[inline]
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration` or until the token fires, whichever comes
    /// first. Returns whether it fired.
    pub fn sleep(&self, duration: Duration) -> bool {
        // A duration too long for the clock is a wait for the stop alone.
        let deadline = Instant::now().checked_add(duration);
        let mut guard = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_stopped() {
                return true;
            }
            let left = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    deadline - now
                }
                None => Duration::from_secs(3600),
            };
            guard = match self.inner.wake.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Waits until the token fires (at once if it has): for a task that
    /// gives up a long wait of its own when the run stops.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use linemark::StopToken;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
    /// let token = StopToken::new();
    /// let firing = token.clone();
    /// tokio::spawn(async move { firing.stop() });
    /// token.stopped().await;
    /// assert!(token.is_stopped());
    /// # });
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn stopped(&self) {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a stop between the check and
            // the wait still wakes it.
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

impl Inner {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders this with a waiter between its check
            // and its wait, so the wake-up is not lost.
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        #[cfg(feature = "tokio")]
        self.notify.notify_waiters();
        let children: Vec<Arc<Inner>> = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for child in children {
            child.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_a_sleeper_early() {
        let token = StopToken::new();
        let sleeper = token.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || sleeper.sleep(Duration::from_secs(60)));
        token.stop();
        assert!(handle.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn sleep_without_stop_times_out() {
        let token = StopToken::new();
        assert!(!token.sleep(Duration::from_millis(1)));
    }

    #[test]
    fn a_child_fires_with_its_parent_and_alone() {
        let parent = StopToken::new();
        let child = parent.child();
        let sleeper = child.clone();
        let handle = std::thread::spawn(move || sleeper.sleep(Duration::from_secs(60)));
        parent.stop();
        assert!(handle.join().unwrap());
        assert!(child.is_stopped());
        // Alone: the parent stays as it is.
        let parent = StopToken::new();
        let child = parent.child();
        child.stop();
        assert!(!parent.is_stopped());
        // Made from a fired parent: fired.
        let fired = StopToken::new();
        fired.stop();
        assert!(fired.child().is_stopped());
    }
}
