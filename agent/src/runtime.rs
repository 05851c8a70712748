//! Wiring and shutdown: listeners -> intake -> period ticker -> sink queue -> sink.
//!
//! Components start in data-path order and stop in the same order, so everything downstream
//! drains: at SIGTERM/SIGINT the listeners stop accepting, every session finishes the frame in
//! hand (and acknowledges what was merged), the open period closes early, every closed period
//! goes to the sink, and the sink gets the rest of `sink.shutdown_deadline_secs` to deliver.
//!
//! With `[self_metrics] cloudwatch = true` the ticker also wakes at every period's close to
//! attach the agent's own metrics to the period they describe (`self_metrics`); the
//! last of them go with the period closed early at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::admin::{self, AdminState};
use crate::aggregate::{Aggregator, ClosedPeriod, Settings};
use crate::config::Config;
use crate::durability::{Wal, WalError};
use crate::ingest::listen::{ListenError, Listeners};
use crate::ingest::sequence::Sequences;
use crate::ingest::session::SessionContext;
use crate::ingest::Intake;
use crate::model::PeriodData;
use crate::self_metrics::SelfMetrics;
use crate::sinks::Sink;
use crate::stats::{DropCounters, DropReason, Gauge, Stats, DROPPED_SAMPLES};

/// Why the agent could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The ingest listeners could not start.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The write-ahead log (`[durability]`) could not be opened or replayed.
    #[error(transparent)]
    Durability(#[from] WalError),
    /// The StatsD listeners (`[statsd]`) could not start.
    #[error(transparent)]
    Statsd(#[from] crate::statsd::StatsdError),
    /// The admin endpoint could not start.
    #[error("cannot listen on admin.addr {addr}: {source} (change admin.addr, or set it to \"\" to disable the endpoint)")]
    Admin {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What one run did, for the final log line and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Periods handed to the sink.
    pub periods: u64,
    /// Samples in those periods.
    pub samples: u64,
    /// Samples accepted in this run and never published: the sink queue was full, the sink
    /// failed, or the CloudWatch publisher dropped them (refused, invalid, expired, its queue
    /// full, or still held at the shutdown deadline). Non-zero makes the exit status 1.
    pub dropped_samples: u64,
}

enum SinkMsg {
    /// A closed period and the samples merged into it.
    Period(PeriodData, u64),
    Shutdown(Instant),
}

/// A started agent: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// TCP address SDKs connect to.
    pub ingest_addr: Option<SocketAddr>,
    /// Admin endpoint address.
    pub admin_addr: Option<SocketAddr>,
    /// UDP address StatsD clients send to, when `[statsd]` is enabled.
    pub statsd_addr: Option<SocketAddr>,
}

/// Runs the agent until `shutdown` completes, then drains within the configured deadline.
/// `on_ready` is called once listeners are bound (with their real addresses).
/// `extra_dimensions` are added to every metric (the `[ecs]` task-metadata dimensions).
pub async fn run(
    config: Config,
    extra_dimensions: Vec<(String, String)>,
    sink: Box<dyn Sink>,
    stats: Stats,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Running),
) -> Result<RunSummary, RunError> {
    let listeners = Listeners::bind(&config.ingest).await?;
    let statsd = if config.statsd.enabled {
        Some(crate::statsd::StatsdListeners::bind(&config.statsd)?)
    } else {
        None
    };
    let admin_listener = if config.admin.addr.is_empty() {
        None
    } else {
        let addr: SocketAddr = config.admin.addr.parse().map_err(|_| RunError::Admin {
            addr: config.admin.addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not IP:port"),
        })?;
        Some(admin::bind(addr).await.map_err(|source| RunError::Admin {
            addr: config.admin.addr.clone(),
            source,
        })?)
    };
    let running = Running {
        ingest_addr: listeners.tcp_addr(),
        admin_addr: admin_listener.as_ref().and_then(|l| l.local_addr().ok()),
        statsd_addr: statsd.as_ref().and_then(|s| s.udp_addr()),
    };

    let wal = if config.durability.enabled() {
        Some(Wal::open(&config.durability, &stats)?)
    } else {
        None
    };
    let mut settings = Settings::from_config(&config);
    settings.extra_dimensions = extra_dimensions;
    settings.extra_dimensions.sort();
    let own = SelfMetrics::new(&config.self_metrics, &settings, &stats, SystemTime::now());
    // Periods a previous run left in the write-ahead log open again, so their batches are
    // published with their own timestamps.
    let oldest = wal
        .as_ref()
        .and_then(|(_, left)| left.oldest_period())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let now = SystemTime::now();
    let aggregator = Aggregator::new(settings, &stats, oldest.map_or(now, |o| o.min(now)));
    let sequences = Sequences::new(
        config.aggregate.max_processes,
        Duration::from_secs(config.aggregate.process_ttl_secs),
    );
    let mut intake = Intake::new(aggregator, sequences, &stats);
    let wal = match wal {
        Some((wal, leftovers)) => {
            intake = intake.with_wal(wal.clone());
            replay(&intake, &wal, leftovers, &config)?;
            Some(wal)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(SessionContext::new(
        intake.clone(),
        config.ingest.limits(),
        config.ingest.max_buffered_bytes,
        Duration::from_secs(config.ingest.idle_timeout_secs),
        Duration::from_secs(config.ingest.frame_timeout_secs),
        stop_rx.clone(),
        &stats,
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let depth = stats.gauge(
        "tally_agent_sink_queue_depth",
        "Closed periods waiting for the sink.",
        &[],
    );
    let (tx, rx) = mpsc::channel::<SinkMsg>(config.sink.queue_periods);

    let summary = Arc::new(parking_lot::Mutex::new(RunSummary::default()));
    let sink_task = tokio::spawn(sink_loop(
        sink,
        rx,
        depth.clone(),
        wal.clone(),
        (stats.clone(), summary.clone()),
        Duration::from_secs(config.sink.shutdown_deadline_secs),
    ));
    let serve_task = {
        let stats = stats.clone();
        let max = config.ingest.max_connections;
        let stop = stop_rx.clone();
        tokio::spawn(async move { listeners.serve(ctx, max, stop, &stats).await })
    };
    let admin_task = admin_listener.map(|l| {
        tokio::spawn(admin::serve(
            l,
            AdminState {
                stats: stats.clone(),
                ready: ready.clone(),
                period_secs: config.period_secs,
                self_metrics: crate::self_metrics::published_count(&config.self_metrics),
                max_datums_per_request: config.publish.max_datums_per_request as u64,
            },
            stop_rx.clone(),
        ))
    });
    let ticker = tokio::spawn(tick_loop(
        intake.clone(),
        tx.clone(),
        depth.clone(),
        stats.clone(),
        summary.clone(),
        config.period(),
        own,
        stop_rx.clone(),
    ));

    // StatsD clients feed the same intake as SDK connections (after the replay above).
    let statsd = statsd.map(|s| s.start(&intake, &stats, config.period_secs, &config.namespace));
    ready.store(true, Ordering::Relaxed);
    tracing::info!(
        ingest = ?running.ingest_addr,
        unix_socket = %config.ingest.unix_socket,
        admin = ?running.admin_addr,
        statsd = ?running.statsd_addr,
        namespace = %config.namespace,
        period_secs = config.period_secs,
        write_ahead_log = %config.durability.dir,
        "tally-agent ready"
    );
    if !config.durability.enabled() {
        tracing::warn!(
            "write-ahead log off (durability.dir is not set): if this agent is killed, what it \
             acknowledged but had not published is lost, uncounted. Set durability.dir to a \
             directory only this agent uses (the ECS files in examples/ecs use /run/tally/wal)"
        );
    }
    on_ready(&running);

    shutdown.await;
    let deadline = Instant::now() + Duration::from_secs(config.sink.shutdown_deadline_secs);
    tracing::info!(
        deadline_secs = config.sink.shutdown_deadline_secs,
        "shutting down: no new connections, draining sessions"
    );
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    // Sessions get at most a quarter of the deadline to finish the frames in hand.
    let drain = (deadline - Instant::now()) / 4;
    if tokio::time::timeout(drain, serve_task).await.is_err() {
        tracing::warn!("some connections did not finish their frame in time; their batches stay with the SDK, unacknowledged");
    }
    if let Some(s) = statsd {
        // Reads what the kernel still holds and hands it over before the periods close.
        let _ = tokio::task::spawn_blocking(move || s.stop()).await;
    }
    let own = ticker.await.ok().flatten();
    let mut last = intake.close_all();
    if let Some(mut own) = own {
        own.on_shutdown(SystemTime::now(), &mut last);
    }
    let drops = stats.drop_counters();
    for p in last {
        send_period(
            &tx,
            p,
            &depth,
            &drops,
            &summary,
            Some(deadline),
            wal.as_ref(),
        )
        .await;
    }
    let _ = tokio::time::timeout_at(deadline, tx.send(SinkMsg::Shutdown(deadline))).await;
    drop(tx);
    // A second past the deadline: the sink stops at the deadline itself and still has to
    // count what it could not publish.
    if tokio::time::timeout_at(deadline + Duration::from_secs(1), sink_task)
        .await
        .is_err()
    {
        tracing::error!(
            "the sink did not finish before sink.shutdown_deadline_secs; exiting anyway"
        );
    }
    if let Some(t) = admin_task {
        t.abort();
    }
    let s = *summary.lock();
    tracing::info!(
        periods = s.periods,
        samples = s.samples,
        dropped_samples = s.dropped_samples,
        "tally-agent stopped"
    );
    Ok(s)
}

/// Merges and re-logs what a previous run left in the write-ahead log.
fn replay(
    intake: &Intake,
    wal: &Wal,
    leftovers: crate::durability::Leftovers,
    config: &Config,
) -> Result<(), WalError> {
    if leftovers.is_empty() {
        return Ok(());
    }
    let files = leftovers.len();
    intake.seed_sequences(wal.first_sequences(&leftovers)?);
    let limits = config.ingest.limits();
    let mut undecodable = 0u64;
    let n = wal.replay(leftovers, |payload| {
        match tally::wire::BatchView::parse(payload, &limits) {
            Ok(batch) => {
                intake.replay_frame(&batch, payload);
                true
            }
            Err(e) => {
                // It was decoded with the same limits before being logged: only a change of
                // [ingest] limits between the runs can refuse it now.
                undecodable += 1;
                tracing::error!(error = %e, "a logged batch no longer decodes (were the [ingest] limits lowered?); its samples are lost");
                false
            }
        }
    })?;
    if undecodable > 0 {
        intake.count_undecodable_replay(undecodable);
    }
    tracing::info!(
        files,
        batches = n,
        dir = %wal.dir().display(),
        "replayed the write-ahead log of the previous run; its periods will be published"
    );
    Ok(())
}

async fn send_period(
    tx: &mpsc::Sender<SinkMsg>,
    p: ClosedPeriod,
    depth: &Gauge,
    drops: &DropCounters,
    summary: &parking_lot::Mutex<RunSummary>,
    deadline: Option<Instant>,
    wal: Option<&Arc<Wal>>,
) {
    let start = crate::aggregate::period::unix_secs(p.data.timestamp);
    // Wait for room for at most a period (or until the shutdown deadline), then count the loss.
    let wait = match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()),
        None => Duration::from_secs(u64::from(p.data.period_secs)),
    };
    let samples = p.samples;
    // Counted before the send: the sink may take the period (and count it out) at once, and
    // the gauge must not read -1 meanwhile.
    depth.add(1);
    match tokio::time::timeout(wait, tx.send(SinkMsg::Period(p.data, samples))).await {
        Ok(Ok(())) => {
            let mut s = summary.lock();
            s.periods += 1;
            s.samples += samples;
        }
        _ => {
            depth.add(-1);
            let reason = if deadline.is_some() {
                DropReason::ShutdownDeadline
            } else {
                DropReason::SinkQueueFull
            };
            drops.add(reason, samples);
            let reason = reason.as_str();
            summary.lock().dropped_samples += samples;
            tracing::error!(samples, reason, "a closed period could not be handed to the sink (raise sink.queue_periods or check the sink)");
            // Its loss is counted: the write-ahead log does not keep it for a later replay.
            if let Some(w) = wal {
                w.release(start);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // One call site; each argument is a distinct handle the loop owns.
async fn tick_loop(
    intake: Intake,
    tx: mpsc::Sender<SinkMsg>,
    depth: Gauge,
    stats: Stats,
    summary: Arc<parking_lot::Mutex<RunSummary>>,
    period: Duration,
    mut own: Option<SelfMetrics>,
    mut stop: watch::Receiver<bool>,
) -> Option<SelfMetrics> {
    let drops = stats.drop_counters();
    loop {
        let now = SystemTime::now();
        let mut at = intake.next_close_at().unwrap_or(now + period);
        if let Some(o) = &own {
            // Self-metrics are described every period, with or without user data.
            at = at.min(o.next_due_at(now));
        }
        let wait = at.duration_since(now).unwrap_or(Duration::ZERO).min(period);
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return own,
            _ = tokio::time::sleep(wait) => {}
        }
        // Replayed periods are due at once (their close time has passed).
        let now = SystemTime::now();
        // Outside the merge lock (sessions go on merging), on this task's worker: a blocking
        // thread would build the closed period in another malloc arena than the one the open
        // period is freed to, which measured +7 MiB of peak and +15-20 MiB after a close of
        // 100k series (scripts/agent-rss.sh --close).
        let mut closed = intake.close_due(now);
        if let Some(o) = &mut own {
            o.on_tick(now, &mut closed);
        }
        for p in closed {
            send_period(&tx, p, &depth, &drops, &summary, None, intake.wal()).await;
        }
    }
}

async fn sink_loop(
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<SinkMsg>,
    depth: Gauge,
    wal: Option<Arc<Wal>>,
    (stats, summary): (Stats, Arc<parking_lot::Mutex<RunSummary>>),
    shutdown_deadline: Duration,
) {
    let drops = stats.drop_counters();
    let mut deadline = None;
    let mut settled = sink.settled();
    let mut sent = 0u64;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(SinkMsg::Period(p, samples)) => {
                    depth.add(-1);
                    if let Some(w) = &wal {
                        w.handed_off(crate::aggregate::period::unix_secs(p.timestamp));
                    }
                    sent += 1;
                    if let Err(e) = sink.send(p).await {
                        tracing::error!(sink = sink.name(), samples, "{e}: the period is lost");
                        // A sink that settles on its own (CloudWatch) counts what it could
                        // not publish itself; for the others the period is gone.
                        if settled.is_none() {
                            drops.add(DropReason::SinkError, samples);
                            summary.lock().dropped_samples += samples;
                        }
                    }
                    if settled.is_none() {
                        // The period is written out and dropped.
                        if let Some(w) = &wal {
                            w.settle(sent);
                        }
                        tokio::task::spawn_blocking(crate::util::release_free_memory);
                    }
                }
                Some(SinkMsg::Shutdown(d)) => {
                    deadline = Some(d);
                    break;
                }
                None => break,
            },
            Ok(()) = async { settled.as_mut().expect("guarded").changed().await }, if settled.is_some() => {
                // Every period handed over so far is published or counted as dropped: the
                // sink holds no datum now.
                let n = *settled.as_mut().expect("guarded").borrow_and_update();
                if let Some(w) = &wal {
                    w.settle(n);
                }
                tokio::task::spawn_blocking(crate::util::release_free_memory);
            }
        }
    }
    // No shutdown message (the ingest side ended first): the configured deadline from now.
    let d = deadline.unwrap_or_else(|| Instant::now() + shutdown_deadline);
    if let Err(e) = sink.shutdown(d).await {
        tracing::error!(sink = sink.name(), "{e}");
    }
    // Everything the publisher dropped in this run (refused by CloudWatch, expired, pushed
    // out of a full queue, still held at the deadline) is lost with it: part of its summary
    // and exit status, not only of /metrics.
    let lost = crate::publish::stats::DropReason::ALL
        .iter()
        .map(|r| stats.counter_value(DROPPED_SAMPLES, &[("reason", r.agent_reason().as_str())]))
        .fold(0u64, u64::saturating_add);
    let mut s = summary.lock();
    s.dropped_samples = s.dropped_samples.saturating_add(lost);
    drop(s);
    if let (Some(w), Some(s)) = (&wal, &settled) {
        w.settle(*s.borrow());
    }
}
