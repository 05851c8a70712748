//! Faults and bad input at the agent's ingest boundary, with the agent as a real process (stdout
//! sink, JSON lines): stalled and slow senders, malformed frames and unpublishable values. The
//! well-behaved clients' totals must stay exact throughout, every refusal must be counted in
//! `/metrics` and explained in the log, and memory must stay bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::{counter, frame_header, now_ms, prom, rss_kib, total, wait_for_metric, Agent, Client};
use tally::wire::{encode_batch, AckStatus, Series, SeriesValue, Unit, VERSION};

fn gauge(name: &str, route: &str, v: f64) -> Series {
    Series {
        name: name.into(),
        unit: Unit::None,
        labels: vec![("Route".into(), route.into())],
        value: SeriesValue::Gauge {
            last: v,
            min: v,
            max: v,
            updates: 1,
        },
    }
}

/// One batch from a well-behaved client, which must be accepted.
fn good(c: &mut Client, n: u64) {
    assert_eq!(
        c.send(vec![counter("RequestCount", "/good", n)]),
        Some(AckStatus::Accepted),
        "a well-behaved client is served"
    );
}

/// Waits, when needed, until at most 20 s of the current wall-clock minute have passed, so
/// that a test of about 15 s runs inside one 60-s period. (A flood of new series that
/// straddles a period boundary fills the next period's `max_series` before a well-behaved
/// client's series is seen again there: its samples are then dropped, and counted, as the
/// bound says, which a test asserting exact totals must not run into by chance.)
fn start_early_in_a_minute() {
    let into = (now_ms() / 1000) % 60;
    if into > 20 {
        std::thread::sleep(Duration::from_secs(61 - into));
    }
}

fn metric(agent: &Agent, series: &str) -> u64 {
    prom(&agent.admin_get("/metrics"), series)
}

#[test]
fn stalled_and_slow_senders_cannot_stall_other_clients_or_the_publisher() {
    // A byte budget that two frames declared at the maximum size would exhaust if the agent
    // reserved a frame's declared length before its bytes arrived; and a frame timeout longer
    // than the clients' 10 s wait for an ack, so a stall would fail their sends.
    let agent = Agent::start(&[
        "--set",
        "period_secs=1",
        "--set",
        "ingest.max_buffered_bytes=262144",
        "--set",
        "ingest.max_frame_bytes=131072",
        "--set",
        "ingest.frame_timeout_secs=12",
        "--set",
        "ingest.idle_timeout_secs=12",
    ]);
    let addr = agent.ingest;

    // Eight senders declare a maximal frame, send 100 bytes of it and stop.
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&frame_header(VERSION, 131_072)).unwrap();
            s.write_all(&[0u8; 100]).unwrap();
            s
        })
        .collect();
    // One sends half a header and stops.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&frame_header(VERSION, 64)[..6]).unwrap();
    stalled.push(half);

    // One sends 300 batches and never reads an acknowledgement.
    let noack = std::thread::spawn(move || {
        let mut c = Client::connect(addr, 9_001);
        for i in 1..=300u64 {
            let b = c.batch(i, vec![counter("RequestCount", "/noack", 1)]);
            let mut frame = Vec::new();
            encode_batch(&b, &mut frame).unwrap();
            c.stream.write_all(&frame).unwrap();
        }
        c // kept open (unread acks and all) until the end of the test
    });

    // Meanwhile three well-behaved clients, and one large frame (~100 KiB) that needs more of
    // the budget than the stalled senders left unreserved under the old scheme.
    let good_clients: Vec<_> = (1..=3u64)
        .map(|id| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, id);
                for _ in 0..30 {
                    good(&mut c, 3);
                }
            })
        })
        .collect();
    let mut big = Client::connect(addr, 77);
    let wide: Vec<Series> = (0..3_000)
        .map(|i| counter("WideCount", &format!("/w{i:05}"), 1))
        .collect();
    assert_eq!(big.send(wide), Some(AckStatus::Accepted));
    for c in good_clients {
        c.join().unwrap();
    }
    let noack = noack.join().unwrap();

    // The publisher kept closing periods while the stalled senders were connected.
    let closed = wait_for_metric(
        &agent,
        "tally_agent_periods_closed_total",
        1,
        Duration::from_secs(20),
    );
    assert!(closed >= 1, "periods closed while senders stalled");
    // The stalled senders are cut off after the frame timeout and counted as truncated.
    let truncated = wait_for_metric(
        &agent,
        "tally_agent_decode_errors_total{reason=\"truncated\"}",
        9,
        Duration::from_secs(30),
    );
    assert_eq!(truncated, 9);
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "the agent closed it");
    }
    let accepted = wait_for_metric(
        &agent,
        "tally_agent_batches_total{outcome=\"accepted\"}",
        391,
        Duration::from_secs(20),
    );
    assert_eq!(accepted, 300 + 90 + 1);
    drop(noack);

    let (ok, out, err) = agent.terminate();
    assert!(ok, "clean exit; stderr:\n{err}");
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/good")], "sum"),
        270.0
    );
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/noack")], "sum"),
        300.0
    );
    let wide: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.contains("\"WideCount\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let routes: std::collections::BTreeSet<&str> = wide
        .iter()
        .map(|v| v["dimensions"]["Route"].as_str().unwrap())
        .collect();
    assert_eq!(routes.len(), 3_000);
    let sum: f64 = wide.iter().map(|v| v["sum"].as_f64().unwrap()).sum();
    assert_eq!(sum, 3_000.0);
    // Log lines are rate-limited per reason: whichever stalled sender is cut off first (half a
    // header, or a header without its payload) is the one explained.
    assert!(
        err.contains("frame truncated while reading frame"),
        "the stall is explained in the log:\n{err}"
    );
}

#[test]
fn bad_input_is_refused_counted_and_explained_while_others_are_served_in_bounded_memory() {
    let max_series = 20_000u64;
    start_early_in_a_minute();
    let agent = Agent::start(&[
        "--set",
        &format!("aggregate.max_series={max_series}"),
        "--set",
        "ingest.max_frame_bytes=4194304",
        // Memos of all connections together: a quarter of this, 2 MiB.
        "--set",
        "ingest.max_buffered_bytes=8388608",
    ]);
    let addr = agent.ingest;
    let mut ok = Client::connect(addr, 1);
    good(&mut ok, 1);
    let rss_start = rss_kib(agent.child.id());

    // An oversized frame: refused from its header, connection closed.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&frame_header(VERSION, 4_194_305)).unwrap();
    let mut b = [0u8; 1];
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    good(&mut ok, 1);

    // A truncated frame: 50 of 100 declared bytes, then the sender closes.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&frame_header(VERSION, 100)).unwrap();
    c.write_all(&[0u8; 50]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    good(&mut ok, 1);

    // A protocol version this agent does not speak.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&frame_header(VERSION + 1, 10)).unwrap();
    c.write_all(&[0u8; 10]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(c.read(&mut b).unwrap_or(0), 0);
    good(&mut ok, 1);

    // A metric name over 255 bytes: the batch is refused and the connection goes on.
    let mut bad = Client::connect(addr, 2);
    assert_eq!(
        bad.send(vec![
            counter(&"N".repeat(300), "/long", 1),
            counter("RequestCount", "/sibling", 1),
        ]),
        Some(AckStatus::Rejected)
    );
    // A non-ASCII dimension value, NaN and infinite gauges: those series are dropped, the
    // rest of the batch is merged.
    assert_eq!(
        bad.send(vec![
            counter("RequestCount", "/café", 4),
            gauge("QueueDepth", "/nan", f64::NAN),
            gauge("QueueDepth", "/inf", f64::INFINITY),
            counter("RequestCount", "/kept", 2),
        ]),
        Some(AckStatus::Accepted)
    );
    // Timestamps outside CloudWatch's window (the epoch, three hours ahead): re-stamped to
    // the agent's clock and published.
    for end in [0, now_ms() + 3 * 3_600_000] {
        bad.seq += 1;
        let mut b = bad.batch(bad.seq, vec![counter("RequestCount", "/clock", 5)]);
        b.start_unix_ms = end.saturating_sub(100);
        b.end_unix_ms = end;
        assert_eq!(bad.send_batch(&b), Some(AckStatus::Accepted));
    }
    good(&mut ok, 1);

    // Sixteen senders whose parse memos would each hold about 190 KiB (6,000 series): more
    // than the 2 MiB all memos may share. Those that do not fit give their memo up; every
    // batch is still accepted, and the memos' bytes stay within the share.
    let wide: Vec<Series> = (0..6_000u64)
        .map(|i| counter("WideHits", &format!("w{i:05}"), 1))
        .collect();
    let mut senders: Vec<Client> = (0..16).map(|i| Client::connect(addr, 100 + i)).collect();
    for _ in 0..2 {
        for c in &mut senders {
            assert_eq!(c.send(wide.clone()), Some(AckStatus::Accepted));
        }
    }
    let m = agent.admin_get("/metrics");
    let memo_bytes = prom(&m, "tally_agent_parse_memo_bytes");
    let memos_dropped = prom(&m, "tally_agent_parse_memos_dropped_total");
    eprintln!("memos: {memo_bytes} bytes held, {memos_dropped} given up");
    assert!(memo_bytes <= 2 * 1024 * 1024, "{memo_bytes} bytes");
    assert!(
        memo_bytes >= 1024 * 1024,
        "memos were not kept: {memo_bytes} bytes"
    );
    assert!(memos_dropped >= 1, "no memo was given up");
    drop(senders);
    let rss_before_million = rss_kib(agent.child.id());

    // One million distinct label values: 20 batches of 50,000 series.
    let mut flood = Client::connect(addr, 3);
    flood
        .stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    for batch in 0..20u64 {
        let series = (0..50_000u64)
            .map(|i| counter("UserHits", &format!("u{:07}", batch * 50_000 + i), 1))
            .collect();
        assert_eq!(flood.send(series), Some(AckStatus::Accepted));
        good(&mut ok, 1);
    }
    let rss_after_million = rss_kib(agent.child.id());

    let m = agent.admin_get("/metrics");
    let decode = |r: &str| {
        prom(
            &m,
            &format!("tally_agent_decode_errors_total{{reason=\"{r}\"}}"),
        )
    };
    let dropped = |r: &str| {
        prom(
            &m,
            &format!("tally_agent_dropped_samples_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(decode("frame_too_large"), 1);
    assert_eq!(decode("truncated"), 1);
    assert_eq!(decode("unsupported_version"), 1);
    assert_eq!(decode("string_too_long"), 1);
    assert_eq!(
        prom(&m, "tally_agent_batches_total{outcome=\"rejected\"}"),
        1
    );
    assert_eq!(dropped("non_ascii_dimension"), 4);
    assert_eq!(dropped("non_finite_value"), 2);
    assert_eq!(
        prom(
            &m,
            "tally_agent_restamped_batches_total{reason=\"timestamp_too_old\"}"
        ),
        1
    );
    assert_eq!(
        prom(
            &m,
            "tally_agent_restamped_batches_total{reason=\"timestamp_in_future\"}"
        ),
        1
    );
    // The million: at most max_series per period admitted (the flood may straddle a period
    // boundary), every other sample counted.
    let flood_dropped = dropped("max_series");
    assert!(
        flood_dropped >= 1_000_000 - 2 * max_series,
        "{flood_dropped}"
    );
    let active = metric(&agent, "tally_agent_active_series");
    eprintln!(
        "RSS: {rss_start} KiB at start, {rss_before_million} KiB before the million, \
         {rss_after_million} KiB after; {flood_dropped} samples dropped for max_series; \
         {active} active series"
    );
    // Bounded memory: admitting the million would take hundreds of MiB (each series key
    // holds its strings); the bound keeps growth to the admitted series and decode buffers.
    assert!(
        rss_after_million < rss_before_million + 128 * 1024,
        "RSS grew from {rss_before_million} KiB to {rss_after_million} KiB"
    );

    let (clean, out, err) = agent.terminate();
    assert!(clean || err.contains("dropped"), "stderr:\n{err}");
    // The well-behaved client's 25 batches, and the accepted bad-input batches' valid parts.
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/good")], "sum"),
        25.0
    );
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/kept")], "sum"),
        2.0
    );
    assert_eq!(total(&out, "WideHits", &[("Route", "w05999")], "sum"), 32.0);
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/clock")], "sum"),
        10.0
    );
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/sibling")], "sum"),
        0.0
    );
    let admitted = out.matches("\"UserHits\"").count() as u64;
    assert_eq!(admitted + flood_dropped, 1_000_000);
    // Each refusal is explained in the log, naming what to change.
    for needle in [
        "exceeds the limit of 4194304 bytes",
        "frame truncated while reading frame payload",
        "wire protocol version 2 is not supported",
        "metric name is 300 bytes long, over the limit of 255",
        "non-ASCII",
        "NaN or an infinite value",
        "older than CloudWatch accepts",
        "further ahead than CloudWatch accepts",
        "aggregate.max_series = 20000 reached",
    ] {
        assert!(err.contains(needle), "log lacks {needle:?}:\n{err}");
    }
}

#[test]
fn a_frame_finished_after_the_shutdown_close_is_left_with_the_sdk_not_acknowledged() {
    // A CloudWatch endpoint nobody listens on keeps the agent publishing (and alive) until
    // its shutdown deadline, long after it closed its periods.
    let endpoint = format!(
        "publish.endpoint_url=http://127.0.0.1:{}",
        common::free_port()
    );
    let mut agent = Agent::start_with(
        &[
            "--sink",
            "cloudwatch",
            "--set",
            &endpoint,
            "--set",
            "publish.region=us-east-1",
            "--set",
            "publish.backoff_base_ms=50",
            "--set",
            "sink.shutdown_deadline_secs=4",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let mut first = Client::connect(agent.ingest, 41);
    good(&mut first, 5);
    // A second sender is half-way through a frame when SIGTERM arrives.
    let mut late = Client::connect(agent.ingest, 42);
    let mut frame = Vec::new();
    encode_batch(
        &late.batch(1, vec![counter("RequestCount", "/late", 7)]),
        &mut frame,
    )
    .unwrap();
    let half = frame.len() / 2;
    late.stream.write_all(&frame[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    agent.sigterm();
    // Sessions get a quarter of the 4-s deadline (1 s), then the periods close; the frame's
    // last bytes arrive after that, while the agent still publishes.
    std::thread::sleep(Duration::from_millis(2_000));
    late.stream.write_all(&frame[half..]).unwrap();
    assert_eq!(
        late.read_ack(),
        None,
        "a batch merged after the close would sit in a period nobody publishes: it must stay \
         with the SDK, unacknowledged"
    );
    let (ok, _, err) = agent.wait(Duration::from_secs(30));
    assert!(
        err.contains("arrived after the periods closed for shutdown"),
        "the refusal is logged; stderr:\n{err}"
    );
    // The first sender's 5 samples could not reach CloudWatch by the deadline: the run says
    // so in its exit status, not only in /metrics.
    assert!(
        !ok,
        "an agent that lost samples at its deadline exits non-zero; stderr:\n{err}"
    );
}

#[test]
fn a_full_disk_neither_hides_logged_batches_behind_a_cut_write_nor_loses_them_at_replay() {
    start_early_in_a_minute();
    let dir = tempfile::tempdir().unwrap();
    let wal = format!("durability.dir={}", dir.path().display());
    // Every file the agent writes may grow to 1 KiB: a batch of 40 series crosses that part
    // way through its record, as a disk that fills up does.
    let mut first = Agent::start_limited(&["--set", &wal], &[], Some(1024));
    let mut c = Client::connect(first.ingest, 51);
    assert_eq!(
        c.send(vec![counter("RequestCount", "/wal", 1)]),
        Some(AckStatus::Accepted)
    );
    let big: Vec<Series> = (0..40)
        .map(|i| counter("RequestCount", &format!("/big/{i}"), 100))
        .collect();
    // Merged and acknowledged, but not protected: the log could not take it (logged).
    assert_eq!(c.send(big), Some(AckStatus::Accepted));
    assert_eq!(
        wait_for_metric(
            &first,
            "tally_agent_wal_write_errors_total",
            1,
            Duration::from_secs(10)
        ),
        1
    );
    assert_eq!(
        c.send(vec![counter("RequestCount", "/wal", 2)]),
        Some(AckStatus::Accepted)
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // A start on a disk that is still full: replay cannot log the batches again, so the old
    // segment must stay. Then a crash again.
    let mut second = Agent::start_limited(&["--set", &wal], &[], Some(1));
    assert!(metric(&second, "tally_agent_wal_write_errors_total") >= 1);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    // A start with room again: the log is replayed.
    let third = Agent::start(&["--set", &wal]);
    let replayed = metric(&third, "tally_agent_wal_replayed_batches_total");
    let (ok, out, err) = third.terminate();
    assert!(ok, "{err}");
    assert_eq!(
        (
            replayed,
            total(&out, "RequestCount", &[("Route", "/wal")], "sum")
        ),
        (2, 3.0),
        "both small batches come back, the one logged after the failed write too; stderr:\n{err}"
    );
}

/// Makes the segments a fresh log (generation 1) of 60-s periods writes next, for this minute
/// and the next, FIFOs: opening one for writing blocks until it is read, and fdatasync on one
/// fails (EINVAL). Returns their paths.
fn fifo_segments(wal: &std::path::Path) -> Vec<std::path::PathBuf> {
    let now = now_ms() / 1000;
    [now / 60 * 60, now / 60 * 60 + 60]
        .iter()
        .map(|&start| {
            let path = wal.join(tally_agent::testing::segment_name(start, 1));
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo(3) with a NUL-terminated path we own.
            assert_eq!(
                unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
                0,
                "mkfifo {path:?}"
            );
            path
        })
        .collect()
}

#[test]
fn a_stuck_write_ahead_log_disk_does_not_stall_the_admin_endpoint_or_new_connections() {
    // A segment file that blocks like a stuck disk: a FIFO with no reader, where the log's
    // next segment goes. Opening it for writing blocks until the test opens it for reading.
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let agent = Agent::start(&[
        "--set",
        &format!("durability.dir={}", wal.display()),
        "--set",
        "period_secs=60",
    ]);
    let fifos = fifo_segments(&wal);

    // Two clients whose batches wait on the stuck disk: one in the append, the other for the
    // merge lock the append holds. Each would hold one of the agent's two runtime workers.
    let senders: Vec<_> = (0..2u64)
        .map(|i| {
            let addr = agent.ingest;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, 500 + i);
                c.stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                c.send(vec![counter("RequestCount", "/stuck", 1)])
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // The admin endpoint and the listener still answer.
    let health = tally_agent::admin::check_health(agent.admin, Duration::from_secs(5));
    assert!(
        matches!(health, Ok(true)),
        "/health answered while the log's disk was stuck: {health:?}"
    );
    let probe = TcpStream::connect_timeout(&agent.ingest, Duration::from_secs(5));
    assert!(probe.is_ok(), "a new connection is accepted: {probe:?}");

    // The disk comes back: both batches are logged and acknowledged.
    let readers: Vec<_> = fifos
        .into_iter()
        .map(|path| {
            std::thread::spawn(move || {
                let mut f = std::fs::File::open(path).unwrap();
                let mut sink = Vec::new();
                let _ = f.read_to_end(&mut sink);
            })
        })
        .collect();
    for s in senders {
        assert_eq!(s.join().unwrap(), Some(AckStatus::Accepted));
    }
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/stuck")], "sum"),
        2.0
    );
    drop(readers);
}

#[test]
fn a_resend_of_a_batch_whose_fdatasync_failed_is_not_acknowledged_until_it_is_on_disk() {
    // durability.sync = every_batch on a disk whose fdatasync fails: the next segment is a
    // FIFO (read as it is written), where fdatasync answers EINVAL every time.
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let agent = Agent::start(&[
        "--set",
        &format!("durability.dir={}", wal.display()),
        "--set",
        "durability.sync=\"every_batch\"",
        "--set",
        "period_secs=60",
    ]);
    for path in fifo_segments(&wal) {
        std::thread::spawn(move || {
            if let Ok(mut f) = std::fs::File::open(path) {
                let mut sink = Vec::new();
                let _ = f.read_to_end(&mut sink);
            }
        });
    }
    let batch = |c: &Client| c.batch(1, vec![counter("RequestCount", "/unsynced", 4)]);
    let mut c = Client::connect(agent.ingest, 900);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(
        c.send_batch(&batch(&c)),
        None,
        "merged and logged, but not on disk: no ack, the connection closes"
    );
    // The SDK sends it again on a new connection: still not on disk, so no `Duplicate`
    // (which would make the SDK forget it).
    let mut again = Client::connect(agent.ingest, 900);
    again
        .stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(again.send_batch(&batch(&again)), None);
    let m = agent.admin_get("/metrics");
    assert!(prom(&m, "tally_agent_wal_syncs_total") >= 2, "{m}");
    let (_, out, _) = agent.terminate();
    // Merged once, published once.
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/unsynced")], "sum"),
        4.0
    );
}
