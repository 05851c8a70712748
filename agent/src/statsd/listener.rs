//! The sockets: UDP (and optionally a Unix datagram socket), each read by its own thread
//! into its own [`Receiver`], with the kernel's drop counter watched.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use thiserror::Error;

use super::{Receiver, StatsdConfig, StatsdStats};
use crate::ingest::Intake;
use crate::stats::Stats;

/// Why the StatsD listeners could not start. Each message names the key to change.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StatsdError {
    /// A socket could not be bound.
    #[error("cannot listen for StatsD on {what}: {source} (change statsd.udp_addr / statsd.unix_socket, or set statsd.enabled = false)")]
    Bind {
        /// The address or path.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The socket's mode or group could not be set.
    #[error("cannot set the mode or group of the StatsD socket {path}: {source} (check statsd.unix_socket_group and the directory's permissions)")]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The group is unknown.
    #[error("statsd.unix_socket_group {0:?} is neither a group in /etc/group nor a numeric gid")]
    UnknownGroup(String),
}

enum Sock {
    Udp(UdpSocket),
    Unix(UnixDatagram, PathBuf),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Udp(s) => s.as_raw_fd(),
            Sock::Unix(s, _) => s.as_raw_fd(),
        }
    }
}

/// The bound StatsD sockets, not yet read.
pub struct StatsdListeners {
    socks: Vec<(Sock, &'static str)>,
    emf: Option<(TcpListener, UdpSocket)>,
    cfg: StatsdConfig,
}

impl std::fmt::Debug for StatsdListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsdListeners")
            .field("udp_addr", &self.udp_addr())
            .finish_non_exhaustive()
    }
}

/// The running listener threads.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops reading: each thread reads what the kernel still holds, hands everything to the
    /// intake and ends. Blocks until they have (call it from a blocking thread).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a StatsD listener thread panicked; what it held is lost");
            }
        }
    }
}

fn group_id(group: &str) -> Result<u32, StatsdError> {
    crate::util::group_id(group).ok_or_else(|| StatsdError::UnknownGroup(group.to_owned()))
}

fn bind_unix(path: &Path, group: &str) -> Result<UnixDatagram, StatsdError> {
    let gid = if group.is_empty() {
        None
    } else {
        Some(group_id(group)?)
    };
    // A socket file left by a previous run is removed (a datagram socket cannot tell whether
    // someone still reads it; two agents on one path is a configuration error).
    if path.exists() {
        let _ = std::fs::remove_file(path);
    }
    let s = UnixDatagram::bind(path).map_err(|source| StatsdError::Bind {
        what: path.display().to_string(),
        source,
    })?;
    crate::util::restrict_socket(path, gid).map_err(|source| StatsdError::Permissions {
        path: path.to_owned(),
        source,
    })?;
    Ok(s)
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, v: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a valid fd we own, a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd, a pointer to a live c_int and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

impl StatsdListeners {
    /// Binds the configured sockets and sizes their receive buffers.
    pub fn bind(cfg: &StatsdConfig) -> Result<Self, StatsdError> {
        let mut socks = Vec::new();
        if !cfg.udp_addr.is_empty() {
            let s = UdpSocket::bind(&cfg.udp_addr).map_err(|source| StatsdError::Bind {
                what: cfg.udp_addr.clone(),
                source,
            })?;
            socks.push((Sock::Udp(s), "udp"));
        }
        if !cfg.unix_socket.is_empty() {
            let path = PathBuf::from(&cfg.unix_socket);
            let s = bind_unix(&path, &cfg.unix_socket_group)?;
            socks.push((Sock::Unix(s, path), "unix"));
        }
        for (s, name) in &socks {
            let fd = s.fd();
            let want = cfg.receive_buffer_bytes.min(i32::MAX as usize) as libc::c_int;
            if let Err(e) = setsockopt_int(fd, libc::SO_RCVBUF, want) {
                tracing::warn!(
                    listener = name,
                    "SO_RCVBUF could not be set ({e}); the kernel default applies"
                );
            }
            let got = getsockopt_int(fd, libc::SO_RCVBUF).unwrap_or(0);
            tracing::info!(
                listener = name,
                asked = want,
                effective = got,
                "StatsD receive buffer (the kernel caps it at net.core.rmem_max and reports double the asked size for its bookkeeping)"
            );
            if let Sock::Udp(_) = s {
                if let Err(e) = setsockopt_int(fd, libc::SO_RXQ_OVFL, 1) {
                    tracing::warn!("SO_RXQ_OVFL could not be set ({e}): kernel drops are read from /proc/net/udp at shutdown only");
                }
            }
            // Wake up regularly to flush and to see the stop flag.
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: a valid fd, a pointer to a live timeval and its size.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
        }
        let emf = if cfg.emf_addr.is_empty() {
            None
        } else {
            let bind_err = |source| StatsdError::Bind {
                what: format!("{} (statsd.emf_addr)", cfg.emf_addr),
                source,
            };
            let tcp = TcpListener::bind(&cfg.emf_addr).map_err(bind_err)?;
            let udp = UdpSocket::bind(&cfg.emf_addr).map_err(bind_err)?;
            tcp.set_nonblocking(true).map_err(bind_err)?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(bind_err)?;
            Some((tcp, udp))
        };
        Ok(StatsdListeners {
            socks,
            emf,
            cfg: cfg.clone(),
        })
    }

    /// The bound UDP address, if any.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.socks.iter().find_map(|(s, _)| match s {
            Sock::Udp(u) => u.local_addr().ok(),
            Sock::Unix(..) => None,
        })
    }

    /// The bound EMF TCP address, if any.
    pub fn emf_addr(&self) -> Option<SocketAddr> {
        self.emf.as_ref().and_then(|(t, _)| t.local_addr().ok())
    }

    /// Starts one reading thread per socket, each merging into `intake`; EMF records are
    /// clamped to `namespace`.
    pub fn start(
        self,
        intake: &Intake,
        stats: &Stats,
        period_secs: u32,
        namespace: &str,
    ) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if let Some((tcp, udp)) = self.emf {
            let receiver = Receiver::new(
                self.cfg.clone(),
                intake.clone(),
                StatsdStats::new(stats, "emf"),
                period_secs,
                u64::MAX,
            )
            .for_emf(namespace);
            let refused = stats.counter(
                "tally_agent_emf_connections_refused_total",
                "EMF TCP connections refused past statsd.emf_max_connections.",
                &[],
            );
            threads.extend(emf::start(tcp, udp, receiver, &self.cfg, &stop, refused));
        }
        for (n, (sock, name)) in self.socks.into_iter().enumerate() {
            let receiver = Receiver::new(
                self.cfg.clone(),
                intake.clone(),
                StatsdStats::new(stats, name),
                period_secs,
                n as u64,
            );
            let stop = stop.clone();
            let cfg = self.cfg.clone();
            let t = std::thread::Builder::new()
                .name(format!("statsd-{name}"))
                .spawn(move || read_loop(sock, receiver, &cfg, &stop))
                .expect("a thread can be spawned at start");
            threads.push(t);
        }
        Running { stop, threads }
    }
}

/// What one `recvmsg` gave.
enum Got {
    Packet {
        len: usize,
        truncated: bool,
        kernel_drops: Option<u32>,
    },
    Nothing,
    Failed(std::io::Error),
}

fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> Got {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one SO_RXQ_OVFL control message (a u32), aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: zeroed msghdr is a valid empty header; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is open; msg points at live iovec/control buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Got::Nothing,
            std::io::ErrorKind::Interrupted => Got::Nothing,
            _ => Got::Failed(e),
        };
    }
    let mut kernel_drops = None;
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                kernel_drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Got::Packet {
        len: n as usize,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        kernel_drops,
    }
}

/// The drops column of this UDP socket's line in /proc/net/udp{,6} (matched by inode).
fn proc_udp_drops(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat on an open fd into a zeroed stat we own.
    let ino = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        st.st_ino
    };
    let ino = ino.to_string();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if f.len() >= 13 && f[9] == ino {
                return f[12].parse().ok();
            }
        }
    }
    None
}

fn read_loop(sock: Sock, mut receiver: Receiver, cfg: &StatsdConfig, stop: &AtomicBool) {
    let fd = sock.fd();
    let is_udp = matches!(sock, Sock::Udp(_));
    // One byte more than the largest packet accepted, so a larger one is seen as such.
    let mut buf = vec![0u8; cfg.max_packet_bytes + 1];
    let interval = Duration::from_millis(cfg.flush_interval_ms);
    let mut last_flush = Instant::now();
    let mut drops_seen = 0u64;
    let mut log = crate::util::RateLimitedLog::new(Duration::from_secs(10));
    let mut on_packet =
        |receiver: &mut Receiver, got: Got, buf: &[u8], drops_seen: &mut u64| -> bool {
            match got {
                Got::Packet {
                    len,
                    truncated,
                    kernel_drops,
                } => {
                    if let Some(d) = kernel_drops {
                        receiver.kernel_drops(u64::from(d), drops_seen);
                    }
                    if truncated || len > cfg.max_packet_bytes {
                        receiver.oversized(len);
                    } else {
                        receiver.packet(&buf[..len], SystemTime::now());
                    }
                    true
                }
                Got::Nothing => false,
                Got::Failed(e) => {
                    log.warn(
                        "statsd_recv",
                        format_args!("reading the StatsD socket failed: {e}"),
                    );
                    std::thread::sleep(Duration::from_millis(10));
                    false
                }
            }
        };
    while !stop.load(Ordering::Relaxed) {
        let got = recv(fd, &mut buf, libc::MSG_TRUNC);
        on_packet(&mut receiver, got, &buf, &mut drops_seen);
        if last_flush.elapsed() >= interval {
            // Drops after the last packet read carry no SO_RXQ_OVFL message: the socket's
            // line in /proc/net/udp says them.
            if is_udp {
                if let Some(d) = proc_udp_drops(fd) {
                    receiver.kernel_drops(d, &mut drops_seen);
                }
            }
            receiver.tick(SystemTime::now());
            last_flush = Instant::now();
        }
    }
    // What the kernel still holds was sent before the stop: read it (bounded), then hand
    // everything over.
    for _ in 0..10_000_000u64 {
        let got = recv(fd, &mut buf, libc::MSG_TRUNC | libc::MSG_DONTWAIT);
        if !on_packet(&mut receiver, got, &buf, &mut drops_seen) {
            break;
        }
    }
    if is_udp {
        if let Some(d) = proc_udp_drops(fd) {
            receiver.kernel_drops(d, &mut drops_seen);
        }
    }
    receiver.flush(true);
    if let Sock::Unix(_, path) = &sock {
        let _ = std::fs::remove_file(path);
    }
}

/// The EMF listeners: TCP connections (one thread each, a line a record) and UDP datagrams
/// go through a bounded channel to one thread that owns the EMF receiver.
mod emf {
    use std::io::{BufRead, BufReader, ErrorKind, Read};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant, SystemTime};

    use super::super::{Receiver, StatsdConfig};
    use crate::stats::Counter;

    pub(super) fn start(
        tcp: TcpListener,
        udp: UdpSocket,
        mut receiver: Receiver,
        cfg: &StatsdConfig,
        stop: &Arc<AtomicBool>,
        refused: Counter,
    ) -> Vec<JoinHandle<()>> {
        // Back-pressure, not loss: a full channel makes connections wait.
        let (tx, rx) = sync_channel::<Msg>(4096);
        let interval = Duration::from_millis(cfg.flush_interval_ms);
        let process = std::thread::Builder::new()
            .name("emf".into())
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    match rx.recv_timeout(Duration::from_millis(50)) {
                        Ok(Msg::Data(bytes)) => receiver.emf_packet(&bytes, SystemTime::now()),
                        Ok(Msg::Oversized) => receiver.emf_oversized(),
                        Err(RecvTimeoutError::Timeout) => {}
                        // Every reader has ended (after the stop): hand everything over.
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    if last.elapsed() >= interval {
                        receiver.tick(SystemTime::now());
                        last = Instant::now();
                    }
                }
                receiver.flush(true);
            })
            .expect("a thread can be spawned at start");
        let max = cfg.emf_max_record_bytes;
        let max_conns = cfg.emf_max_connections;
        let (stop_u, tx_u) = (stop.clone(), tx.clone());
        let udp_thread = std::thread::Builder::new()
            .name("emf-udp".into())
            .spawn(move || {
                let mut buf = vec![0u8; max + 1];
                loop {
                    let stopping = stop_u.load(Ordering::Relaxed);
                    if stopping {
                        let _ = udp.set_nonblocking(true);
                    }
                    match udp.recv(&mut buf) {
                        Ok(0) => {}
                        Ok(n) if n <= max => {
                            let _ = tx_u.send(Msg::Data(buf[..n].to_vec()));
                        }
                        // Larger than a record may be: counted as a refused record.
                        Ok(_) => {
                            let _ = tx_u.send(Msg::Oversized);
                        }
                        Err(_) if stopping => break,
                        Err(_) => {}
                    }
                }
            })
            .expect("a thread can be spawned at start");
        let stop_a = stop.clone();
        let accept = std::thread::Builder::new()
            .name("emf-tcp".into())
            .spawn(move || {
                let open = Arc::new(AtomicUsize::new(0));
                while !stop_a.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((s, _)) => {
                            if open.load(Ordering::Relaxed) >= max_conns {
                                refused.inc();
                                continue;
                            }
                            open.fetch_add(1, Ordering::Relaxed);
                            let (tx, stop, open) = (tx.clone(), stop_a.clone(), open.clone());
                            let _ = std::thread::Builder::new().name("emf-conn".into()).spawn(
                                move || {
                                    connection(s, &tx, &stop, max);
                                    open.fetch_sub(1, Ordering::Relaxed);
                                },
                            );
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .expect("a thread can be spawned at start");
        vec![process, udp_thread, accept]
    }

    /// What the readers hand to the EMF thread.
    enum Msg {
        /// One or more records.
        Data(Vec<u8>),
        /// A record longer than `statsd.emf_max_record_bytes` (dropped).
        Oversized,
    }

    /// Reads newline-separated records until the client closes, or the agent stops and the
    /// connection has nothing more to read.
    fn connection(s: TcpStream, tx: &SyncSender<Msg>, stop: &AtomicBool, max: usize) {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let mut r = BufReader::new(s.take(u64::MAX));
        let mut line = Vec::new();
        loop {
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        let _ = tx.send(Msg::Data(std::mem::take(&mut line)));
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
            if line.len() > max {
                // A record longer than allowed: counted as refused, the connection closed
                // (the rest of the line cannot be told from the next record).
                let _ = tx.send(Msg::Oversized);
                return;
            }
        }
        if !line.is_empty() {
            let _ = tx.send(Msg::Data(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn bound(
        group: &str,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        Result<StatsdListeners, StatsdError>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dsd.socket");
        let cfg = StatsdConfig {
            enabled: true,
            udp_addr: String::new(),
            unix_socket: path.display().to_string(),
            unix_socket_group: group.into(),
            ..StatsdConfig::default()
        };
        let l = StatsdListeners::bind(&cfg);
        (dir, path, l)
    }

    #[test]
    fn the_unix_socket_is_owner_only_or_shared_with_the_configured_group() {
        let (_d, path, l) = bound("");
        l.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // SAFETY: getgid(2) has no preconditions.
        let gid = unsafe { libc::getgid() };
        let (_d, path, l) = bound(&gid.to_string());
        l.unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
    }

    #[test]
    fn an_unknown_group_is_refused_naming_the_key() {
        let (_d, _p, l) = bound("no-such-group-tally");
        let e = l.unwrap_err().to_string();
        assert!(e.contains("statsd.unix_socket_group"), "{e}");
    }
}
