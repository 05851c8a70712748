//! Step 3 of the data path: the flusher, a thread of its own (the host application needs no
//! async runtime). Every interval it drains the cells, merges the deltas into the outbox,
//! seals batches with sequence numbers, sends them, and forgets each one only when the agent
//! acknowledges it.
//!
//! While the agent is away (or slow: more than [`WINDOW`] batches unacknowledged) new deltas
//! keep merging into one open set, so memory grows with the number of series, not with time;
//! the open set is sealed when it reaches an eighth of `max_unsent_bytes`, and past the bound
//! the oldest batches are dropped and counted. After a reconnect every unacknowledged batch is
//! sent again with its original sequence number, which the agent uses to drop duplicates.

mod collect;
mod outbox;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};

pub(crate) use collect::collect;
#[cfg(feature = "testing")]
pub(crate) use collect::merge_value;
#[cfg(feature = "testing")]
pub(crate) use outbox::encode_deltas;
use outbox::Outbox;

use crate::registry::Registry;
use crate::transport::{spawn_ack_reader, AgentAddr, Backoff, Conn, ConnEvent};
use crate::wire::{AckStatus, ProcessIdentity};
use std::io::Write;

/// Most sealed batches waiting for acks before new deltas merge instead of sealing.
pub(crate) const WINDOW: usize = 4;

/// Requests from the [`Tally`](crate::Tally) handle to its flusher.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Collect and send now; answer `true` once everything is acknowledged, `false` at the
    /// deadline.
    Flush {
        deadline: Instant,
        reply: Sender<bool>,
    },
    /// Collect, send and wait for acks until the deadline, then stop.
    Shutdown {
        deadline: Instant,
        reply: Sender<()>,
    },
}

/// Counters the flusher keeps for [`Tally::stats`](crate::Tally::stats).
#[derive(Debug, Default)]
pub(crate) struct StatsCells {
    pub(crate) dropped_samples: AtomicU64,
    pub(crate) dropped_batches: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) batches_acked: AtomicU64,
    pub(crate) samples_acked: AtomicU64,
    pub(crate) batches_rejected: AtomicU64,
    pub(crate) samples_rejected: AtomicU64,
    pub(crate) samples_lost_at_shutdown: AtomicU64,
    /// Samples recorded after shutdown (drained and counted when stats are read).
    pub(crate) samples_after_shutdown: AtomicU64,
    /// Set once shutdown has finished: the flusher no longer drains the cells.
    pub(crate) shut_down: AtomicBool,
    pub(crate) unsent_bytes: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) ack_timeouts: AtomicU64,
    pub(crate) connected: AtomicBool,
    /// The highest protocol version the agent's last ack advertised (0 before any ack).
    pub(crate) agent_version: std::sync::atomic::AtomicU16,
    pub(crate) last_error: parking_lot::Mutex<Option<String>>,
}

/// What the flusher needs to know.
#[derive(Debug, Clone)]
pub(crate) struct FlusherConfig {
    pub(crate) addr: AgentAddr,
    pub(crate) interval: Duration,
    pub(crate) identity: ProcessIdentity,
    pub(crate) max_unsent_bytes: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// Longest wait for an ack before the connection is taken for dead.
    pub(crate) ack_timeout: Duration,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Flusher {
    registry: Arc<Registry>,
    stats: Arc<StatsCells>,
    cfg: FlusherConfig,
    outbox: Outbox,
    conn: Option<(u64, Conn)>,
    conn_ids: u64,
    backoff: Backoff,
    next_attempt: Instant,
    /// Since when batches sent on this connection have waited for an ack with none
    /// arriving (restarted by each ack); `None` while nothing sent waits.
    ack_clock: Option<Instant>,
    events_tx: Sender<ConnEvent>,
    events_rx: Receiver<ConnEvent>,
    interval_start_ms: u64,
    waiters: Vec<(Instant, Sender<bool>)>,
}

/// Starts the flusher thread.
pub(crate) fn spawn(
    registry: Arc<Registry>,
    stats: Arc<StatsCells>,
    cfg: FlusherConfig,
) -> std::io::Result<(Sender<Ctl>, std::thread::JoinHandle<()>)> {
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let f = Flusher {
        outbox: Outbox::new(cfg.identity.clone(), cfg.max_unsent_bytes),
        backoff: Backoff::new(cfg.identity.instance_id),
        registry,
        stats,
        conn: None,
        conn_ids: 0,
        next_attempt: Instant::now(),
        ack_clock: None,
        events_tx,
        events_rx,
        interval_start_ms: unix_ms(),
        waiters: Vec::new(),
        cfg,
    };
    let handle = std::thread::Builder::new()
        .name("tally-flusher".into())
        .spawn(move || f.run(ctl_rx))?;
    Ok((ctl_tx, handle))
}

impl Flusher {
    fn run(mut self, ctl: Receiver<Ctl>) {
        let mut next_tick = Instant::now() + self.cfg.interval;
        loop {
            let now = Instant::now();
            let mut wake = next_tick;
            if self.conn.is_none() && !self.outbox.is_empty() {
                wake = wake.min(self.next_attempt);
            }
            for (deadline, _) in &self.waiters {
                wake = wake.min(*deadline);
            }
            if let Some(t) = self.ack_clock {
                wake = wake.min(t + self.cfg.ack_timeout);
            }
            let events = self.events_rx.clone();
            select! {
                recv(events) -> ev => {
                    if let Ok(ev) = ev {
                        self.on_event(ev);
                    }
                }
                recv(ctl) -> msg => match msg {
                    Ok(Ctl::Flush { deadline, reply }) => {
                        // An explicit flush is worth a connection attempt now.
                        self.next_attempt = Instant::now();
                        self.tick(true);
                        self.waiters.push((deadline, reply));
                    }
                    Ok(Ctl::Shutdown { deadline, reply }) => {
                        self.shutdown(deadline);
                        // The caller may have given up waiting; nothing to do then.
                        let _ = reply.send(());
                        return;
                    }
                    // The handle is gone without a shutdown request (it always sends one);
                    // still flush what is left.
                    Err(_) => {
                        self.shutdown(Instant::now() + Duration::from_secs(5));
                        return;
                    }
                },
                default(wake.saturating_duration_since(now)) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(false);
                next_tick += self.cfg.interval;
                if next_tick <= now {
                    next_tick = now + self.cfg.interval;
                }
            }
            if self
                .ack_clock
                .is_some_and(|t| now >= t + self.cfg.ack_timeout)
            {
                *self.stats.last_error.lock() = Some(format!(
                    "no acknowledgement from the agent at {} for {:?}: reconnecting and sending \
                     the unacknowledged batches again",
                    self.cfg.addr, self.cfg.ack_timeout
                ));
                self.stats.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                self.disconnect();
            }
            if self.conn.is_none() && now >= self.next_attempt && !self.outbox.is_empty() {
                self.connect();
                self.send_unsent();
            }
            self.answer_waiters(Instant::now());
        }
    }

    /// One interval: drain, merge, seal (when the agent keeps up, or `force`), bound, send.
    fn tick(&mut self, force: bool) {
        let deltas = collect(&self.registry.series());
        let now_ms = unix_ms();
        self.outbox.merge(deltas, self.interval_start_ms, now_ms);
        self.interval_start_ms = now_ms;
        if self.conn.is_none() && Instant::now() >= self.next_attempt {
            self.connect();
        }
        let threshold = (self.cfg.max_unsent_bytes / 8).clamp(1024, 4 << 20);
        let keeping_up = self.conn.is_some() && self.outbox.unacked() < WINDOW;
        if force || keeping_up || self.outbox.open_bytes() >= threshold {
            let overflows = self.registry.label_overflows.load(Ordering::Relaxed);
            self.outbox.seal(overflows, now_ms);
        }
        self.outbox.enforce_bound();
        self.publish_stats();
        self.send_unsent();
    }

    fn publish_stats(&self) {
        let d = self.outbox.drops();
        let s = &self.stats;
        s.dropped_samples
            .store(d.dropped_samples, Ordering::Relaxed);
        s.dropped_batches
            .store(d.dropped_batches, Ordering::Relaxed);
        s.unsent_bytes
            .store(self.outbox.total_bytes() as u64, Ordering::Relaxed);
    }

    fn connect(&mut self) {
        let attempt = Conn::connect(
            &self.cfg.addr,
            self.cfg.connect_timeout,
            self.cfg.write_timeout,
        )
        .and_then(|c| {
            let id = self.conn_ids + 1;
            spawn_ack_reader(c.try_clone()?, id, self.events_tx.clone())?;
            Ok((id, c))
        });
        match attempt {
            Ok((id, c)) => {
                self.conn_ids = id;
                self.conn = Some((id, c));
                // The backoff is reset by the first ack, not here: an agent that accepts
                // connections and closes them without answering (its write-ahead log full, a
                // frame it refuses) must not be reconnected to, and sent the whole outbox,
                // every 50-100 ms.
                self.outbox.mark_all_unsent();
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                self.stats.connected.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                *self.stats.last_error.lock() =
                    Some(format!("connecting to {} failed: {e}", self.cfg.addr));
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                self.next_attempt = Instant::now() + self.backoff.next_delay();
            }
        }
    }

    fn disconnect(&mut self) {
        self.ack_clock = None;
        if let Some((_, c)) = self.conn.take() {
            c.close();
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.connected.store(false, Ordering::Relaxed);
        self.outbox.mark_all_unsent();
        self.next_attempt = Instant::now() + self.backoff.next_delay();
    }

    fn send_unsent(&mut self) {
        let Some((_, conn)) = self.conn.as_mut() else {
            return;
        };
        let mut failed = false;
        for s in self.outbox.unsent() {
            if let Err(e) = conn.write_all(&s.frame) {
                *self.stats.last_error.lock() = Some(format!("sending a batch failed: {e}"));
                failed = true;
                break;
            }
            s.sent = true;
            self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            self.ack_clock.get_or_insert_with(Instant::now);
        }
        if failed {
            self.disconnect();
        }
    }

    fn on_event(&mut self, ev: ConnEvent) {
        match ev {
            // An ack is valid whichever connection carried it: the agent has the batch.
            ConnEvent::Ack(ack) => {
                self.backoff.reset();
                self.ack_clock = None;
                // Only version 1 is written today; a later SDK picks the highest version both
                // read from this (see the wire module's "Versions").
                self.stats
                    .agent_version
                    .store(ack.agent_version, Ordering::Relaxed);
                if let Some(samples) = self.outbox.ack(ack.sequence) {
                    let s = &self.stats;
                    if ack.status == AckStatus::Rejected {
                        s.batches_rejected.fetch_add(1, Ordering::Relaxed);
                        s.samples_rejected.fetch_add(samples, Ordering::Relaxed);
                    } else {
                        s.batches_acked.fetch_add(1, Ordering::Relaxed);
                        s.samples_acked.fetch_add(samples, Ordering::Relaxed);
                    }
                    self.publish_stats();
                }
                // Progress: the clock restarts for what is still waiting.
                if self.conn.is_some() && self.outbox.unacked() > 0 {
                    self.ack_clock = Some(Instant::now());
                }
            }
            ConnEvent::Closed { id, reason } => {
                if self.conn.as_ref().is_some_and(|(cur, _)| *cur == id) {
                    *self.stats.last_error.lock() = Some(reason);
                    self.disconnect();
                }
            }
        }
    }

    fn answer_waiters(&mut self, now: Instant) {
        let done = self.outbox.is_empty();
        self.waiters.retain(|(deadline, reply)| {
            if done || now >= *deadline {
                // The caller may have stopped waiting; that is fine.
                let _ = reply.send(done);
                false
            } else {
                true
            }
        });
    }

    /// Final flush: everything recorded so far is sealed and sent; acks are awaited until
    /// `deadline`. What is still unacknowledged then is counted as lost at shutdown.
    fn shutdown(&mut self, deadline: Instant) {
        self.next_attempt = Instant::now();
        self.tick(true);
        loop {
            let now = Instant::now();
            if self.outbox.unacked() == 0 || now >= deadline {
                break;
            }
            if self.conn.is_none() && now >= self.next_attempt {
                self.connect();
                self.send_unsent();
                continue;
            }
            let mut wake = deadline;
            if self.conn.is_none() {
                wake = wake.min(self.next_attempt);
            }
            match self
                .events_rx
                .recv_timeout(wake.saturating_duration_since(now))
            {
                Ok(ev) => self.on_event(ev),
                Err(_) => continue,
            }
        }
        self.stats
            .samples_lost_at_shutdown
            .store(self.outbox.pending_samples(), Ordering::Relaxed);
        self.publish_stats();
        let done = self.outbox.is_empty();
        for (_, reply) in self.waiters.drain(..) {
            // The caller may have stopped waiting; that is fine.
            let _ = reply.send(done);
        }
        self.disconnect();
    }
}
