//! Helpers for end-to-end tests: the agent as a real process, SDK-like clients over real TCP.

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

pub mod cloudwatch;
pub mod fault_proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally::wire::{
    decode_ack, encode_batch, AckStatus, Batch, FrameHeader, Limits, ProcessIdentity, Series,
    SeriesValue, Unit, HEADER_LEN,
};

/// A free loopback port (bound and released; another process may take it before the caller
/// binds it). [`Agent`] does not need it: the agent binds port 0 and reports what it got. For
/// what must be known before a process starts (a port a restarted agent keeps, a private
/// LocalStack's).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running agent process. Its stdout and stderr are drained continuously by two threads
/// (as a container's log driver would), so a full pipe never blocks the agent.
pub struct Agent {
    pub child: Child,
    pub ingest: SocketAddr,
    pub admin: SocketAddr,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// The addresses in the agent's `tally-agent ready` log line (`ingest=Some(127.0.0.1:40445)
/// ... admin=Some(127.0.0.1:42959)`, in colour or not).
fn ready_addrs(line: &str) -> Option<(Option<SocketAddr>, Option<SocketAddr>)> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ ... m.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    if !plain.contains("tally-agent ready") {
        return None;
    }
    let addr = |key: &str| {
        let rest = &plain[plain.find(&format!(" {key}="))? + key.len() + 2..];
        let inner = rest.strip_prefix("Some(")?;
        inner[..inner.find(')')?].parse().ok()
    };
    Some((addr("ingest"), addr("admin")))
}

/// Drains the agent's stderr like [`drain`], and sends the addresses of its ready line once.
fn drain_stderr(
    r: impl Read + Send + 'static,
    ready: std::sync::mpsc::Sender<(Option<SocketAddr>, Option<SocketAddr>)>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        let mut reader = std::io::BufReader::new(r);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line);
            if let Some(addrs) = ready_addrs(&text) {
                let _ = ready.send(addrs);
            }
            all.push_str(&text);
            line.clear();
        }
        all
    })
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Agent {
    /// Starts the agent with the stdout sink in JSON-lines mode plus `extra` flags, and waits
    /// (at most 30 s) until `/health` answers 200.
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_with(extra, &[])
    }

    /// Like [`Agent::start`] with no sink chosen here (pass `--sink ...` in `extra`), and
    /// environment variables `env` set for the process.
    pub fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_limited(extra, env, None)
    }

    /// Like [`Agent::start_with`]; with `max_file_bytes`, every file the agent writes is
    /// limited to that size (RLIMIT_FSIZE, SIGXFSZ ignored): a write that crosses it is cut
    /// short and the next one fails, as on a full disk.
    pub fn start_limited(
        extra: &[&str],
        env: &[(&str, &str)],
        max_file_bytes: Option<u64>,
    ) -> Agent {
        Agent::spawn(extra, env, max_file_bytes, true)
    }

    /// Like [`Agent::start`], with nobody reading the agent's stdout (the pipe's read end is
    /// closed at once): every write to it fails.
    pub fn start_unread(extra: &[&str]) -> Agent {
        Agent::spawn(extra, &[], None, false)
    }

    fn spawn(
        extra: &[&str],
        env: &[(&str, &str)],
        max_file_bytes: Option<u64>,
        read_stdout: bool,
    ) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-agent"));
        if let Some(limit) = max_file_bytes {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls are made (signal(2)
            // and setrlimit(2)), on values owned by this closure; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["run", "--set", "sink.stdout_format=json"]);
        if !extra.contains(&"--sink") {
            cmd.args(["--sink", "stdout"]);
        }
        // Port 0: the agent binds what the system gives and logs it (`tally-agent ready`), so
        // no other process can take the port between a probe and the bind. `extra` may set
        // other addresses (it comes later and wins); the ready line reports them too.
        cmd.args(["--set", "ingest.tcp_addr=127.0.0.1:0"])
            .args(["--set", "admin.addr=127.0.0.1:0"])
            .args(extra)
            .env_remove("TALLY_CONFIG")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("agent binary starts");
        let out = child.stdout.take().unwrap();
        let stdout = Some(if read_stdout {
            drain(out)
        } else {
            drop(out);
            std::thread::spawn(String::new)
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = Some(drain_stderr(child.stderr.take().unwrap(), ready_tx));
        let unbound: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut agent = Agent {
            child,
            ingest: unbound,
            admin: unbound,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The addresses it bound, from its ready line.
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok((ingest, admin)) => {
                    agent.ingest = ingest.unwrap_or(unbound);
                    agent.admin = admin.expect("the agent reports its admin address");
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // Its stderr closed without the line: it is exiting (checked below).
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if let Some(status) = agent.child.try_wait().unwrap() {
                let err = agent.stderr.take().unwrap().join().unwrap();
                panic!("agent exited with {status} before becoming ready:\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "agent did not report its addresses (`tally-agent ready`) in 30 s"
            );
        }
        let admin = agent.admin;
        while !matches!(
            tally_agent::admin::check_health(admin, Duration::from_millis(500)),
            Ok(true)
        ) {
            if let Some(status) = agent.child.try_wait().unwrap() {
                let err = agent.stderr.take().unwrap().join().unwrap();
                panic!("agent exited with {status} before becoming healthy:\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "agent did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// GET a path on the admin endpoint.
    pub fn admin_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Sends SIGTERM and waits (at most 60 s) for exit; returns (success, stdout, stderr).
    pub fn terminate(mut self) -> (bool, String, String) {
        self.sigterm();
        self.wait(Duration::from_secs(60))
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM delivered");
    }

    /// Waits (at most `limit`) for exit; returns (success, stdout, stderr).
    pub fn wait(&mut self, limit: Duration) -> (bool, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stdout.take().unwrap().join().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap();
        (status.success(), out, err)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK-like client: encodes batches with tally::wire and reads acks.
pub struct Client {
    pub stream: TcpStream,
    pub id: u64,
    pub seq: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Client {
    pub fn connect(addr: SocketAddr, id: u64) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client { stream, id, seq: 0 }
    }

    pub fn batch(&self, seq: u64, series: Vec<Series>) -> Batch {
        Batch {
            process: ProcessIdentity {
                instance_id: self.id,
                pid: self.id as u32,
                service: "shop".into(),
                environment: "test".into(),
                host: "localhost".into(),
            },
            sequence: seq,
            start_unix_ms: now_ms() - 100,
            end_unix_ms: now_ms(),
            drops: Default::default(),
            series,
        }
    }

    /// Sends the next batch; returns the ack status, or None when the agent closed the
    /// connection.
    pub fn send(&mut self, series: Vec<Series>) -> Option<AckStatus> {
        self.seq += 1;
        let b = self.batch(self.seq, series);
        self.send_batch(&b)
    }

    pub fn send_batch(&mut self, b: &Batch) -> Option<AckStatus> {
        let mut frame = Vec::new();
        encode_batch(b, &mut frame).unwrap();
        self.send_raw(&frame)
    }

    pub fn send_raw(&mut self, frame: &[u8]) -> Option<AckStatus> {
        self.stream.write_all(frame).ok()?;
        self.read_ack()
    }

    pub fn read_ack(&mut self) -> Option<AckStatus> {
        let mut hdr = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut hdr).ok()?;
        let h = FrameHeader::parse(&hdr, &Limits::default()).unwrap();
        let mut p = vec![0u8; h.len as usize];
        self.stream.read_exact(&mut p).ok()?;
        Some(decode_ack(&p).unwrap().status)
    }
}

pub fn counter(name: &str, route: &str, n: u64) -> Series {
    Series {
        name: name.into(),
        unit: Unit::Count,
        labels: vec![("Route".into(), route.into())],
        value: SeriesValue::Counter(n),
    }
}

/// A latency histogram in nanoseconds.
pub fn latency(route: &str, values_ns: &[u64]) -> Series {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for v in values_ns {
        h.record(*v).unwrap();
    }
    Series {
        name: "ResponseTime".into(),
        unit: Unit::Nanoseconds,
        labels: vec![("Route".into(), route.into())],
        value: SeriesValue::Histogram {
            scale: 1.0,
            histogram: h,
        },
    }
}

/// Sums `field` over the JSON lines of `metric` whose dimensions include `dims`.
pub fn total(stdout: &str, metric: &str, dims: &[(&str, &str)], field: &str) -> f64 {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["metric"] == metric)
        .filter(|v| dims.iter().all(|(k, val)| v["dimensions"][*k] == *val))
        .filter(|v| {
            // Exact dimension-set match: no extra dimensions beyond the globals and `dims`.
            v["dimensions"].as_object().map_or(0, |o| o.len()) == dims.len() + 2
        })
        .map(|v| v[field].as_f64().unwrap())
        .sum()
}

/// A counter value from Prometheus text.
pub fn prom(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// A frame header as the SDK writes it (`TALY`, version, kind 1 = Batch, flags 0, length),
/// with any version and declared length.
pub fn frame_header(version: u16, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"TALY");
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6] = 1;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Polls the agent's `/metrics` until `series` reaches `want` or `limit` passes; returns the
/// last value seen.
pub fn wait_for_metric(agent: &Agent, series: &str, want: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = prom(&agent.admin_get("/metrics"), series);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
