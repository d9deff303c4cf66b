//! The HTTP client: ureq agents, with their connection pools.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// HTTP agents for the workers. Each request takes one from a stack and
/// puts it back when its body is read, with its connection in its pool, so
/// a connection is used by one request at a time and kept alive for the
/// next. One agent shared by all workers measured slower: its connection
/// pool is one lock, held while each pooled connection is probed with
/// three system calls, and the workers queued on it.
pub struct Agents {
    config: ureq::config::Config,
    idle: Mutex<Vec<ureq::Agent>>,
}

impl Agents {
    /// Connect, read and write `timeout`s; error statuses are answers to
    /// read (`Retry-After`, 416), not errors. HTTPS servers are trusted
    /// when their certificate chains to one of `roots`, or, without them,
    /// to the Mozilla roots built in.
    pub fn new(timeout: Duration, roots: Option<Vec<ureq::tls::Certificate<'static>>>) -> Agents {
        let roots = roots.map_or(ureq::tls::RootCerts::WebPki, ureq::tls::RootCerts::from);
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .timeout_per_write(Some(timeout))
            .max_idle_connections(4)
            .max_idle_connections_per_host(4)
            .user_agent(concat!("linemark-download/", env!("CARGO_PKG_VERSION")))
            .build();
        Agents {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `request` with an agent no other request is using.
    pub fn with<T>(&self, request: impl FnOnce(&ureq::Agent) -> T) -> T {
        let taken = self.lock_idle().pop();
        let agent = taken.unwrap_or_else(|| ureq::Agent::new_with_config(self.config.clone()));
        let result = request(&agent);
        self.lock_idle().push(agent);
        result
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<ureq::Agent>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
