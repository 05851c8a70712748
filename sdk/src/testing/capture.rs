//! The capture agent: accept loop, one thread per connection, accumulated totals.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram as Hdr;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::flush::merge_value;
use crate::wire::{
    decode_batch, encode_ack, Ack, AckStatus, Batch, DropReport, FrameHeader, FrameKind, Limits,
    ProcessIdentity, SeriesValue, Unit, HEADER_LEN,
};

/// A series as the agent sees it: name and labels sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// Metric name.
    pub name: String,
    /// Labels, sorted by key.
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    /// A key from borrowed parts (labels in any order).
    pub fn new(name: &str, labels: &[(&str, &str)]) -> Self {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        SeriesKey {
            name: name.to_owned(),
            labels,
        }
    }
}

/// What one process sent.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ProcessTotals {
    /// The identity from its batches.
    pub identity: ProcessIdentity,
    /// Sequence numbers accepted, in arrival order (a resend answered as duplicate is not
    /// repeated here).
    pub sequences: Vec<u64>,
    /// The drop report of its highest sequence (reports are cumulative).
    pub drops: DropReport,
    /// The highest sequence seen.
    pub last_sequence: u64,
}

/// Everything a [`CaptureAgent`] accepted, accumulated.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Totals {
    /// Per series: its unit and the merge of every delta received.
    pub series: BTreeMap<SeriesKey, (Unit, SeriesValue)>,
    /// Per `instance_id`.
    pub processes: BTreeMap<u64, ProcessTotals>,
    /// Batches accepted.
    pub batches_accepted: u64,
    /// Batches received again after a resend, acknowledged as duplicates and not counted.
    pub batches_duplicate: u64,
    /// Frames refused (bad header or payload).
    pub frames_rejected: u64,
}

impl Totals {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&SeriesValue> {
        self.series
            .get(&SeriesKey::new(name, labels))
            .map(|(_, v)| v)
    }

    /// Sum of a counter's deltas (0 when never received).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(SeriesValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    /// A gauge's last value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.value(name, labels) {
            Some(SeriesValue::Gauge { last, .. }) => Some(*last),
            _ => None,
        }
    }

    /// A histogram's merged samples.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Hdr<u64>> {
        match self.value(name, labels) {
            Some(SeriesValue::Histogram { histogram, .. }) => Some(histogram),
            _ => None,
        }
    }

    /// How often an event happened (0 when never received).
    pub fn event_count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(SeriesValue::Event { count, .. }) => *count,
            _ => 0,
        }
    }

    /// An event's value distribution and its scale.
    pub fn event_values(&self, name: &str, labels: &[(&str, &str)]) -> Option<(f64, &Hdr<u64>)> {
        match self.value(name, labels) {
            Some(SeriesValue::Event {
                values: Some((scale, h)),
                ..
            }) => Some((*scale, h)),
            _ => None,
        }
    }

    /// Samples received over all series (see [`SeriesValue::samples`]).
    pub fn samples(&self) -> u64 {
        self.series.values().map(|(_, v)| v.samples()).sum()
    }

    /// Samples the senders reported dropped (latest cumulative report of each process).
    pub fn dropped_samples(&self) -> u64 {
        self.processes
            .values()
            .map(|p| p.drops.dropped_samples)
            .sum()
    }

    /// Label values the senders reported folded into the overflow value.
    pub fn label_overflows(&self) -> u64 {
        self.processes
            .values()
            .map(|p| p.drops.label_overflows)
            .sum()
    }

    fn accept(&mut self, batch: Batch) -> AckStatus {
        let p = self.processes.entry(batch.process.instance_id).or_default();
        if p.sequences.contains(&batch.sequence) {
            self.batches_duplicate += 1;
            return AckStatus::Duplicate;
        }
        p.identity = batch.process.clone();
        p.sequences.push(batch.sequence);
        if batch.sequence > p.last_sequence {
            p.last_sequence = batch.sequence;
            p.drops = batch.drops;
        }
        self.batches_accepted += 1;
        for s in batch.series {
            let key = SeriesKey {
                name: s.name,
                labels: s.labels,
            };
            match self.series.get_mut(&key) {
                Some((_, v)) => merge_value(v, s.value),
                None => {
                    self.series.insert(key, (s.unit, s.value));
                }
            }
        }
        AckStatus::Accepted
    }
}

#[derive(Debug, Default)]
struct Shared {
    totals: Mutex<Totals>,
    changed: Condvar,
}

/// One listening period, between `start`/`restart` and `stop`.
#[derive(Debug)]
struct Run {
    stopping: AtomicBool,
    /// Held for reading while a frame is processed and acked; `stop` takes it for writing so
    /// no frame is half-handled when the connections are shut.
    gate: RwLock<()>,
    conns: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A loopback agent for tests: see the [module docs](super).
#[derive(Debug)]
pub struct CaptureAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<(Arc<Run>, JoinHandle<()>)>>,
}

impl CaptureAgent {
    /// Binds `127.0.0.1:0` and starts accepting. Panics if loopback cannot be bound (a test
    /// environment without networking cannot run these tests anyway).
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .expect("CaptureAgent needs a loopback TCP port: is 127.0.0.1 available?");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let agent = CaptureAgent {
            addr,
            shared: Arc::new(Shared::default()),
            running: Mutex::new(None),
        };
        agent.run(listener);
        agent
    }

    /// The listening address, for [`Builder::agent`](crate::Builder::agent).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn run(&self, listener: TcpListener) {
        let run = Arc::new(Run {
            stopping: AtomicBool::new(false),
            gate: RwLock::new(()),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let (r, shared) = (run.clone(), self.shared.clone());
        let accept = std::thread::Builder::new()
            .name("capture-accept".into())
            .spawn(move || accept_loop(listener, r, shared))
            .expect("spawning the CaptureAgent accept thread");
        *self.running.lock() = Some((run, accept));
    }

    /// Stops like an agent going away: stops accepting, finishes the frame in hand, sends
    /// end-of-stream on every connection (acks already written arrive first), and discards
    /// whatever the SDK sends afterwards without acknowledging it. Totals are kept.
    pub fn stop(&self) {
        let Some((run, accept)) = self.running.lock().take() else {
            return;
        };
        run.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees `stopping` and returns, dropping the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        {
            let _g = run.gate.write();
            for c in run.conns.lock().iter() {
                let _ = c.shutdown(Shutdown::Write);
            }
        }
        for t in run.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// Listens again on the same address (after [`stop`](Self::stop)), keeping the totals
    /// and the record of sequences already accepted. Retries the bind for up to 5 s.
    pub fn restart(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("CaptureAgent could not rebind {}: {e}", self.addr),
            }
        };
        self.run(listener);
    }

    /// A copy of everything accepted so far.
    pub fn totals(&self) -> Totals {
        self.shared.totals.lock().clone()
    }

    /// Waits until `done(totals)` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&Totals) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.shared.totals.lock();
        loop {
            if done(&t) {
                return true;
            }
            if self.shared.changed.wait_until(&mut t, deadline).timed_out() {
                return done(&t);
            }
        }
    }
}

impl Drop for CaptureAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, run: Arc<Run>, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if run.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        run.conns.lock().push(clone);
        let (r, s) = (run.clone(), shared.clone());
        if let Ok(t) = std::thread::Builder::new()
            .name("capture-conn".into())
            .spawn(move || serve(stream, r, s))
        {
            run.threads.lock().push(t);
        }
    }
}

fn serve(mut stream: TcpStream, run: Arc<Run>, shared: Arc<Shared>) {
    let limits = Limits::default();
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    let mut out = Vec::new();
    loop {
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let h = match FrameHeader::parse(&header, &limits) {
            Ok(h) if h.kind == FrameKind::Batch => h,
            _ => {
                shared.totals.lock().frames_rejected += 1;
                break;
            }
        };
        payload.resize(h.len as usize, 0);
        if stream.read_exact(&mut payload).is_err() {
            return;
        }
        let _g = run.gate.read();
        if run.stopping.load(Ordering::SeqCst) {
            break;
        }
        let ack = match decode_batch(&payload, &limits) {
            Ok(batch) => {
                let sequence = batch.sequence;
                let status = shared.totals.lock().accept(batch);
                shared.changed.notify_all();
                Ack {
                    sequence,
                    status,
                    agent_version: crate::wire::VERSION,
                }
            }
            Err(_) => {
                shared.totals.lock().frames_rejected += 1;
                break;
            }
        };
        out.clear();
        encode_ack(&ack, &mut out);
        if stream.write_all(&out).is_err() {
            return;
        }
    }
    drain(&mut stream);
}

/// Sends end-of-stream and reads until the peer closes (at most 2 s), so closing never
/// resets the connection and destroys acks the peer has not read yet.
fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
