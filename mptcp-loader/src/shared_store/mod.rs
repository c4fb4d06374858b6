//! The optional shared store (`run --store redis://...`): gateways that share what their fast
//! paths learn, so that a join arriving at another box than its connection's handshake is
//! judged with the keys the first box saw.
//!
//! Each loader publishes what its own fast path proves about a connection (see [`record`]): the
//! connections it learns (the keys and the subflow of the MP_CAPABLE), the subflows joins
//! validate, and the ends it authenticated, as one Redis hash per connection (TTL: the idle
//! timeout; an ended connection's hash is a tombstone) plus one entry of a Redis stream each;
//! it follows the stream for its peers' records and applies them ([`apply`]: a connection
//! through the same path as its own key events). A loader that starts, or reconnects, first
//! reads every hash (the catch-up), so it knows what its peers learned (and what ended) while it
//! was away before it attaches and enforces.
//!
//! The interface to the loop is narrow: [`SharedStore::publish`] on the way out,
//! [`SharedStore::next`] on the way in (one [`link::FromStore`] at a time, applied by the loop
//! with [`apply::apply_record`]). Key material crosses it but is never logged:
//! [`record::SharedConn`]'s `Debug` shows the token only, joins and ends carry no key, and the
//! URL (which may hold a password) is never printed, only its host and port.

pub mod apply;
pub mod error;
pub mod keeper;
pub mod link;
pub mod record;

use std::path::PathBuf;

use redis::{IntoConnectionInfo as _, TlsCertificates};
use tokio::{sync::mpsc, task::JoinHandle};

use self::{
    link::{FromStore, LinkConfig},
    record::Record,
};
use crate::shared_store::error::StoreError;

/// Publications queued for the store at most; beyond that they are counted as failed (and sent
/// again at the next reconnection, from the maps).
pub const PUBLISH_QUEUE: usize = 65_536;
/// Messages from the store queued for the loop at most (the task waits when it is full).
const INCOMING_QUEUE: usize = 4_096;

/// The `--store*` options.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// `redis://[user@]host[:port][/db]` or `rediss://...` (TLS). A password in the URL works
    /// but shows in `ps`: prefer `password_file`.
    pub url: String,
    /// File whose first line is the password (of the URL's user, or of `default`).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the store's certificate (`rediss://` only; default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// This loader's id in the store (default: host name and process id).
    pub id: Option<String>,
    /// Seconds to wait for the catch-up before attaching anyway (with what the maps hold).
    pub catch_up_timeout_s: u64,
}

// By hand: the URL may hold a password, so `{:?}` shows only where the store is.
#[allow(
    clippy::missing_fields_in_debug,
    reason = "the URL is shown as its address"
)]
impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("address", &self.address().unwrap_or_default())
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("id", &self.id)
            .field("catch_up_timeout_s", &self.catch_up_timeout_s)
            .finish()
    }
}

/// Default `--store-catch-up-timeout`.
pub const DEFAULT_CATCH_UP_TIMEOUT_S: u64 = 5;

impl StoreOptions {
    /// A store at `url` with the defaults.
    #[must_use]
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            password_file: None,
            ca_file: None,
            id: None,
            catch_up_timeout_s: DEFAULT_CATCH_UP_TIMEOUT_S,
        }
    }

    /// Where the store is, without user or password: what logs may show.
    ///
    /// # Errors
    /// [`StoreError::Option`] for a URL the client does not understand.
    pub fn address(&self) -> Result<String, StoreError> {
        Ok(self.connection_info()?.addr().to_string())
    }

    fn connection_info(&self) -> Result<redis::ConnectionInfo, StoreError> {
        self.url.as_str().into_connection_info().map_err(|e| {
            store_error(format!(
                "cannot read the URL ({:?}): use redis://[user@]HOST[:PORT][/DB] or rediss://...",
                e.kind()
            ))
        })
    }

    fn client(&self) -> Result<redis::Client, StoreError> {
        let info = self.connection_info()?;
        let info = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    store_error(format!(
                        "cannot read the password file {} (--store-password-file): {e}",
                        path.display()
                    ))
                })?;
                let password = text.lines().next().unwrap_or_default().trim_end();
                if password.is_empty() {
                    return Err(store_error(format!(
                        "the password file {} (--store-password-file) is empty",
                        path.display()
                    )));
                }
                let settings = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        // The process-wide rustls provider; an earlier install (a second store) is fine. ring
        // rather than aws-lc-rs (which needs cmake to build): no post-quantum key exchange.
        #[allow(
            deprecated,
            reason = "ring has no post-quantum key exchange; see above"
        )]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match (&self.ca_file, tls) {
            (Some(path), true) => {
                let pem = std::fs::read(path).map_err(|e| {
                    store_error(format!(
                        "cannot read the CA file {} (--store-ca-file): {e}",
                        path.display()
                    ))
                })?;
                redis::Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            (Some(_), false) => {
                return Err(store_error(
                    "--store-ca-file needs a rediss:// URL (TLS)".to_owned(),
                ))
            }
            (None, _) => redis::Client::open(info),
        };
        client.map_err(|e| store_error(format!("cannot set up the client ({:?})", e.kind())))
    }
}

fn store_error(problem: String) -> StoreError {
    StoreError::Option { problem }
}

/// A default loader id: host name and process id (unique among the loaders of a store as long
/// as host names are).
#[must_use]
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!(
        "{host}/{}/{}",
        std::process::id(),
        crate::clock::unix_now_ns()
    )
}

/// The loop's end of the store: publishes, receives, and counts.
pub struct SharedStore {
    outgoing: mpsc::Sender<Record>,
    incoming: mpsc::Receiver<FromStore>,
    task: JoinHandle<()>,
    id: String,
    address: String,
}

impl SharedStore {
    /// Starts the connection task (it connects in the background and retries forever). Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Option`] for a bad URL or an unreadable password or CA file.
    pub fn start(options: &StoreOptions, ttl_s: u64) -> Result<Self, StoreError> {
        let address = options.address()?;
        let id = options.id.clone().unwrap_or_else(default_id);
        let (out_tx, out_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let config = LinkConfig {
            client: options.client()?,
            id: id.clone(),
            ttl_s,
        };
        let task = tokio::spawn(link::run(config, out_rx, in_tx));
        Ok(Self {
            outgoing: out_tx,
            incoming: in_rx,
            task,
            id,
            address,
        })
    }

    /// This loader's id in the store.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `host:port` of the store (no credentials).
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Publications waiting to be written.
    #[must_use]
    pub fn queued(&self) -> usize {
        PUBLISH_QUEUE - self.outgoing.capacity()
    }

    /// Queues a publication; `false` when the queue is full (the store is away for long; what
    /// the maps hold is published again at the next reconnection).
    pub fn publish(&self, record: Record) -> bool {
        self.outgoing.try_send(record).is_ok()
    }

    /// The next message from the store (pending forever once the task has ended).
    pub async fn next(&mut self) -> FromStore {
        match self.incoming.recv().await {
            Some(message) => message,
            None => std::future::pending().await,
        }
    }

    /// A message already waiting, if any.
    pub fn try_next(&mut self) -> Option<FromStore> {
        self.incoming.try_recv().ok()
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_never_shows_credentials() {
        let options = StoreOptions::new("redis://fw:s3cret@198.18.5.2:6380/1");
        let address = options.address().unwrap();
        assert_eq!(address, "198.18.5.2:6380");
        let bad = StoreOptions::new("http://198.18.5.2")
            .address()
            .unwrap_err();
        assert!(bad.to_string().contains("redis://"), "{bad}");
    }

    #[test]
    fn option_problems_are_named() {
        let dir = std::env::temp_dir().join(format!("mptcp-store-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let mut options = StoreOptions::new("redis://198.18.5.2");
        options.password_file = Some(empty);
        let err = options.client().unwrap_err().to_string();
        assert!(
            err.contains("--store-password-file") && err.contains("empty"),
            "{err}"
        );
        options.password_file = None;
        options.ca_file = Some(dir.join("ca.pem"));
        let err = options.client().unwrap_err().to_string();
        assert!(err.contains("rediss://"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
