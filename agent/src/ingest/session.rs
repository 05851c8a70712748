//! One SDK connection: frames in, acks out, bad input counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tally::wire::{
    encode_ack, peek_batch_key, Ack, AckStatus, BatchView, DecodeError, FrameHeader, FrameKind,
    Limits, ParseMemo, HEADER_LEN, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;

use super::{FrameOutcome, Intake};
use crate::stats::{Counter, Gauge, Stats};
use crate::util::RateLimitedLog;

/// Payload buffers larger than this are released after use, so an idle connection that once
/// carried a big frame holds little memory: what idle connections keep is outside the shared
/// budget, at most `max_connections` x this (16 MiB with the defaults; 256 KiB kept gave 256
/// MiB). A larger batch is read into a fresh buffer: the loopback flood of `loadgen` (10k
/// series, 5,000-series batches back to back, 1,002 batches) took 325-452 ms against 340-383
/// ms with 256 KiB kept, three alternating runs each, within noise; an SDK sends one batch
/// a flush interval.
const KEEP_BUFFER: usize = FIRST_CHUNK;
/// How long a frame whose header has arrived may take to arrive completely during shutdown.
const SHUTDOWN_PAYLOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Payload bytes reserved from the shared budget before any payload has arrived. The rest of
/// a larger frame is reserved only once these bytes are in, so a client that declares a large
/// frame and stalls holds at most this much of the budget (and only until `frame_timeout`).
/// While `max_buffered_bytes >= max_frame_bytes + max_connections * FIRST_CHUNK` (true with
/// the defaults: 16 MiB + 1024 * 16 KiB <= 64 MiB), a frame that has started always gets the
/// rest of its reservation once frames ahead of it complete: no waiting cycle is possible.
pub const FIRST_CHUNK: usize = 16 * 1024;
/// All connections' parse memos together may hold this share of `ingest.max_buffered_bytes`
/// (one in four: 16 MiB, 64 full memos, with the defaults).
const MEMO_SHARE: usize = 4;
/// Batches a connection parses in full after it gave its memo up for want of room, before it
/// tries to remember again.
const MEMO_PAUSE: u32 = 64;

/// Everything sessions share.
pub struct SessionContext {
    /// Where batches go.
    pub intake: Intake,
    /// Decoder limits.
    pub limits: Limits,
    /// Payload bytes all connections together may buffer (`ingest.max_buffered_bytes`).
    pub budget: Arc<Semaphore>,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Time a frame may take to arrive completely once its header is in.
    pub frame_timeout: Duration,
    /// Flips to `true` at shutdown: sessions finish the frame in hand and close.
    pub shutdown: watch::Receiver<bool>,
    stats: Stats,
    frames: Counter,
    bytes: Counter,
    recognised: Counter,
    /// What the connections' parse memos may hold together.
    memos: MemoAllowance,
    log: Mutex<RateLimitedLog>,
}

impl std::fmt::Debug for SessionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionContext")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl SessionContext {
    /// Builds the shared context.
    pub fn new(
        intake: Intake,
        limits: Limits,
        max_buffered_bytes: usize,
        idle_timeout: Duration,
        frame_timeout: Duration,
        shutdown: watch::Receiver<bool>,
        stats: &Stats,
    ) -> Self {
        SessionContext {
            intake,
            limits,
            budget: Arc::new(Semaphore::new(max_buffered_bytes)),
            idle_timeout,
            frame_timeout,
            shutdown,
            stats: stats.clone(),
            frames: stats.counter(
                "tally_agent_frames_total",
                "Frames received from SDKs.",
                &[],
            ),
            bytes: stats.counter(
                "tally_agent_received_bytes_total",
                "Frame bytes received from SDKs (headers included).",
                &[],
            ),
            recognised: stats.counter(
                "tally_agent_recognised_series_total",
                "Series of accepted batches whose identity the sender had sent before, in the same place (not checked again).",
                &[],
            ),
            memos: MemoAllowance::new(max_buffered_bytes / MEMO_SHARE, stats),
            log: Mutex::new(RateLimitedLog::new(Duration::from_secs(10))),
        }
    }

    fn decode_error(&self, peer: &str, e: &DecodeError) {
        self.stats
            .counter(
                "tally_agent_decode_errors_total",
                "Frames refused by the decoder, by reason.",
                &[("reason", e.reason())],
            )
            .inc();
        self.log
            .lock()
            .warn(e.reason(), format_args!("bad frame from {peer}: {e}"));
    }
}

/// The heap bytes all connections' parse memos may hold together, and what they hold.
///
/// Kept apart from the payload budget (`SessionContext::budget`) on purpose: a payload's
/// reservation ends with its frame, which is what lets every started frame complete, while a
/// memo lives as long as its connection; memos drawing on that budget could hold the room a
/// large frame waits for.
struct MemoAllowance {
    held: AtomicUsize,
    cap: usize,
    gauge: Gauge,
    dropped: Counter,
}

impl MemoAllowance {
    fn new(cap: usize, stats: &Stats) -> Self {
        MemoAllowance {
            held: AtomicUsize::new(0),
            cap,
            gauge: stats.gauge(
                "tally_agent_parse_memo_bytes",
                "Heap bytes the connections' parse memos hold (at most a quarter of ingest.max_buffered_bytes).",
                &[],
            ),
            dropped: stats.counter(
                "tally_agent_parse_memos_dropped_total",
                "Parse memos given up because all connections' memos together reached a quarter of ingest.max_buffered_bytes (that connection's batches are checked in full for a while).",
                &[],
            ),
        }
    }

    fn publish(&self) {
        let held = self.held.load(Ordering::Relaxed);
        self.gauge.set(i64::try_from(held).unwrap_or(i64::MAX));
    }
}

/// What one connection's parse memo holds of the [`MemoAllowance`].
///
/// A memo only spares work (a batch parses to the same result without it), so when the
/// allowance is spent the connection that would take it past gives its memo up, counts that,
/// and parses its next [`MEMO_PAUSE`] batches in full before it remembers again. A memo grows
/// during a parse and is charged right after, so the total may pass the cap by one memo
/// (`ParseMemo::MAX_BYTES`) per parse running at that moment.
struct MemoCharge<'a> {
    allowance: &'a MemoAllowance,
    charged: usize,
    /// Batches left to parse without the memo.
    paused: u32,
}

impl<'a> MemoCharge<'a> {
    fn new(allowance: &'a MemoAllowance) -> Self {
        MemoCharge {
            allowance,
            charged: 0,
            paused: 0,
        }
    }

    /// Whether the next batch may be parsed with the memo (false while a pause lasts).
    fn may_remember(&mut self) -> bool {
        if self.paused > 0 {
            self.paused -= 1;
            return false;
        }
        true
    }

    /// Charges the memo's size after a parse, or gives the memo up when the allowance cannot
    /// take it. The steady state (a memo that kept its batches) changes nothing shared.
    fn settle(&mut self, memo: &mut ParseMemo) {
        let now = memo.heap_bytes();
        let held = &self.allowance.held;
        if now > self.charged {
            let more = now - self.charged;
            let before = held.fetch_add(more, Ordering::Relaxed);
            if before + more > self.allowance.cap {
                held.fetch_sub(now, Ordering::Relaxed);
                *memo = ParseMemo::new();
                self.charged = 0;
                self.paused = MEMO_PAUSE;
                self.allowance.dropped.inc();
            } else {
                self.charged = now;
            }
        } else if now < self.charged {
            held.fetch_sub(self.charged - now, Ordering::Relaxed);
            self.charged = now;
        } else {
            return;
        }
        self.allowance.publish();
    }
}

impl Drop for MemoCharge<'_> {
    fn drop(&mut self) {
        self.allowance
            .held
            .fetch_sub(self.charged, Ordering::Relaxed);
        self.allowance.publish();
    }
}

/// How the header read ended.
enum HeaderRead {
    Frame([u8; HEADER_LEN]),
    Closed,
    Truncated,
    Idle,
    Shutdown,
}

async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    ctx: &SessionContext,
    shutdown: &mut watch::Receiver<bool>,
) -> std::io::Result<HeaderRead> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut n = 0;
    while n < HEADER_LEN {
        let read = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Ok(HeaderRead::Shutdown),
            r = timeout(ctx.idle_timeout, stream.read(&mut hdr[n..])) => r,
        };
        match read {
            Err(_) if n == 0 => return Ok(HeaderRead::Idle),
            // Part of a header and then silence: a stalled sender, not an idle one.
            Err(_) => return Ok(HeaderRead::Truncated),
            Ok(Ok(0)) if n == 0 => return Ok(HeaderRead::Closed),
            Ok(Ok(0)) => return Ok(HeaderRead::Truncated),
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(HeaderRead::Frame(hdr))
}

/// Serves one connection until the peer closes it, sends a bad header, idles out, or the
/// agent shuts down (after finishing the frame in hand).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: String,
    ctx: Arc<SessionContext>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut buf: Vec<u8> = Vec::new();
    let mut ack_buf: Vec<u8> = Vec::with_capacity(32);
    // The descriptors of this sender's recent batches, so that the series it sends again are
    // not checked field by field in every batch (at most ParseMemo::MAX_BYTES, charged to the
    // allowance all connections share).
    let mut memo = ParseMemo::new();
    let mut charge = MemoCharge::new(&ctx.memos);
    loop {
        let hdr = match read_header(&mut stream, &ctx, &mut shutdown).await {
            Ok(HeaderRead::Frame(h)) => h,
            Ok(HeaderRead::Closed) | Ok(HeaderRead::Shutdown) => return,
            Ok(HeaderRead::Idle) => {
                tracing::debug!(%peer, "closing idle connection");
                return;
            }
            Ok(HeaderRead::Truncated) => {
                ctx.decode_error(
                    &peer,
                    &DecodeError::Truncated {
                        field: "frame header",
                    },
                );
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection read failed");
                return;
            }
        };
        ctx.frames.inc();
        let header = match FrameHeader::parse(&hdr, &ctx.limits) {
            Ok(h) if h.kind == FrameKind::Batch => h,
            Ok(_) => {
                ctx.decode_error(&peer, &DecodeError::UnknownFrameKind(FrameKind::Ack as u8));
                return;
            }
            Err(e) => {
                // The stream cannot be re-synchronised after a bad header: close it.
                ctx.decode_error(&peer, &e);
                return;
            }
        };
        let len = header.len as usize;
        let wait = if *shutdown.borrow() {
            SHUTDOWN_PAYLOAD_TIMEOUT.min(ctx.frame_timeout)
        } else {
            ctx.frame_timeout
        };
        buf.clear();
        let permit =
            match timeout(wait, read_payload(&mut stream, &ctx.budget, len, &mut buf)).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(PayloadError::BudgetClosed)) => return,
                Ok(Err(PayloadError::Io)) | Err(_) => {
                    ctx.decode_error(
                        &peer,
                        &DecodeError::Truncated {
                            field: "frame payload",
                        },
                    );
                    return;
                }
            };
        ctx.bytes.add((HEADER_LEN + len) as u64);
        let recalled = memo.recalled();
        let parsed = if charge.may_remember() {
            BatchView::parse_remembering(&buf, &ctx.limits, &mut memo)
        } else {
            BatchView::parse(&buf, &ctx.limits)
        };
        ctx.recognised.add(memo.recalled() - recalled);
        charge.settle(&mut memo);
        // The payload's share of the budget is held until the batch is merged and its log
        // record synced: the buffer is alive until then (the view borrows it), and many
        // sessions waiting on `fdatasync` must not hold payloads the budget no longer counts.
        let (sequence, status) = match parsed {
            Ok(batch) => {
                let seq = batch.sequence;
                let id = batch.process.instance_id;
                match accept(&ctx, &batch, &buf) {
                    FrameOutcome::Ack { status, sync: None } => (seq, status),
                    FrameOutcome::Ack {
                        status,
                        sync: Some(file),
                    } => {
                        // Merged, logged, but not acknowledged until on disk. A failed sync
                        // is remembered, so that the SDK's resend is synced again before it
                        // may hear `Duplicate` (and forget the batch).
                        if !sync_segment(&ctx, file.clone()).await {
                            ctx.intake.not_durable(id, seq, file);
                            return;
                        }
                        ctx.intake.durable(id, seq);
                        (seq, status)
                    }
                    FrameOutcome::Closed => {
                        tracing::info!(
                            "batch {seq} from {peer} arrived after the periods closed for shutdown: not acknowledged (the SDK keeps it and resends it to the next agent)"
                        );
                        return;
                    }
                    FrameOutcome::Refuse => {
                        ctx.log.lock().warn(
                            "wal_full",
                            format_args!("write-ahead log is at durability.max_bytes: batch {seq} from {peer} not acknowledged (the SDK resends it); check that periods are being published, or raise durability.max_bytes"),
                        );
                        return;
                    }
                }
            }
            Err(e) => {
                ctx.decode_error(&peer, &e);
                ctx.intake.count_rejected();
                (
                    peek_batch_key(&buf).map_or(0, |(_, sequence)| sequence),
                    AckStatus::Rejected,
                )
            }
        };
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
        drop(permit);
        ack_buf.clear();
        let ack = Ack {
            sequence,
            status,
            agent_version: VERSION,
        };
        encode_ack(&ack, &mut ack_buf);
        match timeout(ctx.idle_timeout, stream.write_all(&ack_buf)).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::debug!(%peer, "could not write ack; closing");
                return;
            }
        }
    }
}

/// Why a payload could not be read.
enum PayloadError {
    /// The connection failed or closed mid-frame.
    Io,
    /// The byte budget was closed (the agent is stopping).
    BudgetClosed,
}

/// Reads `len` payload bytes into `buf`: first up to [`FIRST_CHUNK`] bytes, then the rest,
/// reserving each part from `budget` just before reading it. Returns the reservation (released
/// once the payload has been decoded).
async fn read_payload<'a, S: AsyncRead + Unpin>(
    stream: &mut S,
    budget: &'a Semaphore,
    len: usize,
    buf: &mut Vec<u8>,
) -> Result<tokio::sync::SemaphorePermit<'a>, PayloadError> {
    let first = len.min(FIRST_CHUNK);
    let reserve = |n: usize| async move {
        // `len` is at most `max_frame_bytes`, which `FrameHeader::parse` keeps within u32.
        let n = u32::try_from(n).map_err(|_| PayloadError::BudgetClosed)?;
        budget
            .acquire_many(n)
            .await
            .map_err(|_| PayloadError::BudgetClosed)
    };
    let mut permit = reserve(first).await?;
    buf.resize(first, 0);
    stream.read_exact(buf).await.map_err(|_| PayloadError::Io)?;
    if len > first {
        permit.merge(reserve(len - first).await?);
        buf.resize(len, 0);
        stream
            .read_exact(&mut buf[first..])
            .await
            .map_err(|_| PayloadError::Io)?;
    }
    Ok(permit)
}

/// Merges a batch and, with `[durability]`, appends it to the write-ahead log. The append is
/// a `write()` (and the first one of a period an `open()`) under the merge lock: a slow or
/// stuck disk would hold the tokio worker, and every session waiting for that lock would hold
/// another, until no worker is left for the listeners, the admin endpoint or the publisher.
/// So with the log on, the call runs as blocking code (`block_in_place`: the runtime moves its
/// other tasks to a fresh worker meanwhile). Without the log the merge is brief CPU work and
/// runs in place.
fn accept(ctx: &SessionContext, batch: &BatchView<'_>, payload: &[u8]) -> FrameOutcome {
    let multi_thread = || {
        tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    };
    // Without the log (the default) the runtime is not looked up for each frame.
    if ctx.intake.wal().is_some() && multi_thread() {
        tokio::task::block_in_place(|| ctx.intake.accept_frame(batch, payload))
    } else {
        ctx.intake.accept_frame(batch, payload)
    }
}

/// Forces a write-ahead log segment to disk before the ack (`durability.sync = "every_batch"`).
/// On failure the batch stays merged but unacknowledged: the connection is closed, and the
/// SDK's resend is answered `Duplicate`.
async fn sync_segment(ctx: &SessionContext, file: Arc<std::fs::File>) -> bool {
    let Some(wal) = ctx.intake.wal().cloned() else {
        return true;
    };
    let path = wal.dir().display().to_string();
    match tokio::task::spawn_blocking(move || wal.sync_file(&file)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(dir = %path, error = %e, "fdatasync of the write-ahead log failed; closing the connection without acknowledging (check the disk under durability.dir)");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "the write-ahead log sync task failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally::wire::{encode_batch, Batch, ProcessIdentity, Series, SeriesValue, Unit};

    /// A batch of `n` counter series of process `id`, its payload.
    fn batch(id: u64, n: usize) -> Vec<u8> {
        let b = Batch {
            process: ProcessIdentity {
                instance_id: id,
                pid: 1,
                service: "shop".into(),
                environment: "prod".into(),
                host: "h".into(),
            },
            sequence: 1,
            start_unix_ms: 1,
            end_unix_ms: 2,
            drops: Default::default(),
            series: (0..n)
                .map(|i| Series {
                    name: "Hits".into(),
                    unit: Unit::Count,
                    labels: vec![("Route".into(), format!("/r{i}"))],
                    value: SeriesValue::Counter(1),
                })
                .collect(),
        };
        let mut out = Vec::new();
        encode_batch(&b, &mut out).unwrap();
        out[HEADER_LEN..].to_vec()
    }

    #[test]
    fn a_memo_past_the_shared_allowance_is_given_up_for_a_pause_then_kept_again() {
        let limits = Limits::default();
        let (a, b) = (batch(1, 200), batch(2, 200));
        let size = |p: &[u8]| {
            let mut m = ParseMemo::new();
            BatchView::parse_remembering(p, &limits, &mut m).unwrap();
            m.heap_bytes()
        };
        let one = size(&a);
        assert!(one > 0);
        // Room for one memo, not two.
        let stats = Stats::new();
        let allowance = MemoAllowance::new(one + one / 2, &stats);
        let held = || stats.gauge_value("tally_agent_parse_memo_bytes", &[]);
        let dropped = || stats.counter_value("tally_agent_parse_memos_dropped_total", &[]);

        let (mut first, mut memo_a) = (MemoCharge::new(&allowance), ParseMemo::new());
        assert!(first.may_remember());
        BatchView::parse_remembering(&a, &limits, &mut memo_a).unwrap();
        first.settle(&mut memo_a);
        assert_eq!((held(), dropped()), (one as i64, 0));

        let (mut second, mut memo_b) = (MemoCharge::new(&allowance), ParseMemo::new());
        BatchView::parse_remembering(&b, &limits, &mut memo_b).unwrap();
        second.settle(&mut memo_b);
        assert!(memo_b.is_empty(), "the memo that does not fit is given up");
        assert_eq!((held(), dropped()), (one as i64, 1));
        // Its next MEMO_PAUSE batches are parsed in full, then it may remember again.
        for _ in 0..MEMO_PAUSE {
            assert!(!second.may_remember());
        }
        assert!(second.may_remember());

        // The first connection closes: its share comes back, and the second's memo fits.
        drop(first);
        assert_eq!(held(), 0);
        BatchView::parse_remembering(&b, &limits, &mut memo_b).unwrap();
        second.settle(&mut memo_b);
        assert!(!memo_b.is_empty());
        assert_eq!((held(), dropped()), (size(&b) as i64, 1));
        drop(second);
        assert_eq!(held(), 0);
    }

    #[test]
    fn the_sequence_of_an_undecodable_batch_is_still_found() {
        let b = Batch {
            process: ProcessIdentity {
                instance_id: 9,
                pid: 300,
                service: "shop".into(),
                environment: "prod".into(),
                host: "h".into(),
            },
            sequence: 4242,
            start_unix_ms: 1,
            end_unix_ms: 2,
            drops: Default::default(),
            series: vec![],
        };
        let mut out = Vec::new();
        encode_batch(&b, &mut out).unwrap();
        let payload = &out[HEADER_LEN..];
        assert_eq!(peek_batch_key(payload).map(|(_, s)| s), Some(4242));
        assert_eq!(peek_batch_key(&payload[..5]), None);
    }
}
