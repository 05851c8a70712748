//! Step 4 of the data path: getting frames to the agent. Parsing the agent address, opening a
//! TCP or Unix-socket connection, reading acks on a thread of their own, and the reconnect
//! backoff.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
#[cfg(unix)]
use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::wire::{decode_ack, Ack, FrameHeader, FrameKind, Limits, HEADER_LEN};

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentAddr {
    /// `host:port`, resolved at every connect (so a DNS change is followed).
    Tcp(String),
    /// A Unix domain socket path.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl AgentAddr {
    /// Parses `tcp://host:port`, `host:port` or `unix:///path`. The error says what is wrong.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            #[cfg(unix)]
            {
                if path.is_empty() {
                    return Err("the unix socket path is empty".into());
                }
                return Ok(AgentAddr::Unix(PathBuf::from(path)));
            }
            #[cfg(not(unix))]
            {
                let _ = path;
                return Err("unix sockets are not available on this platform".into());
            }
        }
        let hp = s.strip_prefix("tcp://").unwrap_or(s);
        if hp.contains("://") {
            return Err("only the tcp:// and unix:// schemes are supported".into());
        }
        let Some((host, port)) = hp.rsplit_once(':') else {
            return Err("expected host:port".into());
        };
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        port.parse::<u16>()
            .map_err(|_| format!("port {port:?} is not a number in 0..=65535"))?;
        Ok(AgentAddr::Tcp(hp.to_owned()))
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Tcp(hp) => write!(f, "tcp://{hp}"),
            #[cfg(unix)]
            AgentAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// One connection to the agent.
#[derive(Debug)]
pub(crate) enum Conn {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Conn {
    /// Connects, trying each resolved address within `timeout`; writes then time out after
    /// `write_timeout` so a stalled agent cannot hold the flusher.
    pub(crate) fn connect(
        addr: &AgentAddr,
        timeout: Duration,
        write_timeout: Duration,
    ) -> io::Result<Conn> {
        let conn = match addr {
            AgentAddr::Tcp(hp) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address resolved");
                let mut found = None;
                for a in hp.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(last)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            #[cfg(unix)]
            AgentAddr::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        };
        match &conn {
            Conn::Tcp(s) => s.set_write_timeout(Some(write_timeout))?,
            #[cfg(unix)]
            Conn::Unix(s) => s.set_write_timeout(Some(write_timeout))?,
        }
        Ok(conn)
    }

    pub(crate) fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            #[cfg(unix)]
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    /// Shuts both directions down; the ack reader sees end of stream and exits.
    pub(crate) fn close(&self) {
        // Errors mean the socket is already closed, which is the goal.
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            #[cfg(unix)]
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// What the ack reader tells the flusher.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// The agent acknowledged a batch.
    Ack(Ack),
    /// Connection `id` ended (end of stream, error, or a frame that is not an ack).
    Closed { id: u64, reason: String },
}

/// Reads ack frames from `conn` until it ends, forwarding them to the flusher.
pub(crate) fn spawn_ack_reader(mut conn: Conn, id: u64, tx: Sender<ConnEvent>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("tally-acks".into())
        .spawn(move || {
            let reason = read_acks(&mut conn, &tx);
            // The flusher may be gone already (shutdown); nothing to tell then.
            let _ = tx.send(ConnEvent::Closed { id, reason });
        })
        .map(|_| ())
}

fn read_acks(conn: &mut Conn, tx: &Sender<ConnEvent>) -> String {
    let limits = Limits {
        max_frame_len: 64,
        ..Limits::default()
    };
    let mut header = [0u8; HEADER_LEN];
    let mut payload = [0u8; 64];
    loop {
        if let Err(e) = conn.read_exact(&mut header) {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                "the agent closed the connection".into()
            } else {
                format!("reading from the agent failed: {e}")
            };
        }
        let h = match FrameHeader::parse(&header, &limits) {
            Ok(h) if h.kind == FrameKind::Ack => h,
            Ok(h) => return format!("the agent sent a {:?} frame where an ack was due", h.kind),
            Err(e) => return format!("the agent sent an invalid frame: {e}"),
        };
        let body = &mut payload[..h.len as usize];
        if let Err(e) = conn.read_exact(body) {
            return format!("reading an ack failed: {e}");
        }
        match decode_ack(body) {
            Ok(ack) => {
                if tx.send(ConnEvent::Ack(ack)).is_err() {
                    return "the flusher stopped".into();
                }
            }
            Err(e) => return format!("the agent sent an invalid ack: {e}"),
        }
    }
}

/// Exponential reconnect backoff with jitter: 100 ms doubling to 10 s, each delay drawn
/// uniformly from its upper half so many processes restarted together spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    attempt: u32,
    rng: u64,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    pub(crate) fn new(seed: u64) -> Self {
        Backoff {
            attempt: 0,
            rng: seed | 1,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: plenty for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = cap / 2;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_every_documented_form() {
        assert_eq!(
            AgentAddr::parse("127.0.0.1:9911"),
            Ok(AgentAddr::Tcp("127.0.0.1:9911".into()))
        );
        assert_eq!(
            AgentAddr::parse("tcp://agent:1"),
            Ok(AgentAddr::Tcp("agent:1".into()))
        );
        assert_eq!(
            AgentAddr::parse("[::1]:9911"),
            Ok(AgentAddr::Tcp("[::1]:9911".into()))
        );
        #[cfg(unix)]
        assert_eq!(
            AgentAddr::parse("unix:///run/tally.sock"),
            Ok(AgentAddr::Unix("/run/tally.sock".into()))
        );
        for bad in ["", "host", ":80", "h:99999", "http://h:1", "unix://"] {
            assert!(AgentAddr::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(42);
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last >= Duration::from_secs(5) && last <= Duration::from_secs(10));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
