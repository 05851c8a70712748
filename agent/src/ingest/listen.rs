//! Listeners: loopback TCP and an optional Unix socket, with a bound on connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use super::session::{self, SessionContext};
use super::IngestConfig;
use crate::stats::{Gauge, Stats};

/// Why a listener could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A non-loopback address without `ingest.allow_non_loopback`.
    #[error(
        "ingest.tcp_addr {0} is not loopback: set ingest.allow_non_loopback = true to listen on it"
    )]
    NotLoopback(SocketAddr),
    /// The address did not parse.
    #[error("ingest.tcp_addr {0:?} is not an IP:port address")]
    BadAddr(String),
    /// Bind failed.
    #[error("cannot listen on {what}: {source} (is another agent running? change ingest.tcp_addr / ingest.unix_socket)")]
    Bind {
        /// Address or path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The socket's group does not exist.
    #[error("ingest.unix_socket_group {0:?} is neither a group in /etc/group nor a numeric gid")]
    UnknownGroup(String),
    /// Setting the socket's owner or mode failed.
    #[error("cannot set owner/mode of {path}: {source}")]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Bound listeners, ready to serve.
#[derive(Debug)]
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds what the configuration asks for.
    pub async fn bind(cfg: &IngestConfig) -> Result<Listeners, ListenError> {
        let tcp = if cfg.tcp_addr.is_empty() {
            None
        } else {
            let addr: SocketAddr = cfg
                .tcp_addr
                .parse()
                .map_err(|_| ListenError::BadAddr(cfg.tcp_addr.clone()))?;
            if !addr.ip().is_loopback() && !cfg.allow_non_loopback {
                return Err(ListenError::NotLoopback(addr));
            }
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError::Bind {
                        what: addr.to_string(),
                        source,
                    })?,
            )
        };
        let unix = if cfg.unix_socket.is_empty() {
            None
        } else {
            let path = PathBuf::from(&cfg.unix_socket);
            Some((bind_unix(&path, &cfg.unix_socket_group)?, path))
        };
        Ok(Listeners { tcp, unix })
    }

    /// The TCP address actually bound (port 0 resolves to a real port).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accepts connections until shutdown, then waits for every session to finish its frame.
    pub async fn serve(
        self,
        ctx: Arc<SessionContext>,
        max_connections: usize,
        shutdown: watch::Receiver<bool>,
        stats: &Stats,
    ) {
        let slots = Arc::new(Semaphore::new(max_connections));
        let open = stats.gauge("tally_agent_connections", "Open SDK connections.", &[]);
        let total = stats.counter(
            "tally_agent_connections_total",
            "SDK connections accepted.",
            &[],
        );
        let mut tasks = Vec::new();
        if let Some(l) = self.tcp {
            let (ctx, slots, sd, open, total) = (
                ctx.clone(),
                slots.clone(),
                shutdown.clone(),
                open.clone(),
                total.clone(),
            );
            tasks.push(tokio::spawn(async move {
                accept_loop(
                    || async { l.accept().await.map(|(s, a)| (s, a.to_string())) },
                    ctx,
                    slots,
                    sd,
                    open,
                    total,
                )
                .await
            }));
        }
        let mut socket_path = None;
        if let Some((l, path)) = self.unix {
            socket_path = Some(path);
            let (ctx, slots, sd, open, total) = (
                ctx.clone(),
                slots.clone(),
                shutdown.clone(),
                open.clone(),
                total.clone(),
            );
            tasks.push(tokio::spawn(async move {
                accept_loop(
                    || async { l.accept().await.map(|(s, _)| (s, "unix".to_owned())) },
                    ctx,
                    slots,
                    sd,
                    open,
                    total,
                )
                .await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(p) = socket_path {
            let _ = std::fs::remove_file(p);
        }
        // Every session holds a slot: taking them all means every session has finished.
        let _ = slots.acquire_many(max_connections as u32).await;
    }
}

async fn accept_loop<S, F, Fut>(
    accept: F,
    ctx: Arc<SessionContext>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    open: Gauge,
    total: crate::stats::Counter,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, String)>>,
{
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            a = accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                total.inc();
                open.add(1);
                let ctx = ctx.clone();
                let open = open.clone();
                tokio::spawn(async move {
                    session::run(stream, peer, ctx).await;
                    open.add(-1);
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn group_id(group: &str) -> Result<u32, ListenError> {
    crate::util::group_id(group).ok_or_else(|| ListenError::UnknownGroup(group.to_owned()))
}

fn bind_unix(path: &Path, group: &str) -> Result<UnixListener, ListenError> {
    // A socket file left by a previous run is removed, unless an agent still answers on it.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::Bind {
                what: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let gid = if group.is_empty() {
        None
    } else {
        Some(group_id(group)?)
    };
    let l = UnixListener::bind(path).map_err(|source| ListenError::Bind {
        what: path.display().to_string(),
        source,
    })?;
    // Restrict the socket before any SDK can rely on it: owner only, or owner + group.
    crate::util::restrict_socket(path, gid).map_err(|source| ListenError::Permissions {
        path: path.to_owned(),
        source,
    })?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_unix_socket_is_created_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.sock");
        let _l = bind_unix(&path, "").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn a_socket_group_makes_it_group_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.sock");
        // Our own primary group is always allowed.
        let gid = std::fs::metadata(dir.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let _l = bind_unix(&path, &gid.gid().to_string()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[tokio::test]
    async fn a_non_loopback_address_is_refused_without_the_switch() {
        let cfg = IngestConfig {
            tcp_addr: "0.0.0.0:0".into(),
            ..IngestConfig::default()
        };
        assert!(matches!(
            Listeners::bind(&cfg).await,
            Err(ListenError::NotLoopback(_))
        ));
    }

    #[test]
    fn an_unknown_group_is_an_error_naming_the_key() {
        let e = group_id("no-such-group-tally").unwrap_err();
        assert!(e.to_string().contains("ingest.unix_socket_group"));
    }
}
