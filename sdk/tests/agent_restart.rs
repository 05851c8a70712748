//! The agent goes away and comes back: nothing is lost while the bound holds, and past the
//! bound every dropped sample is reported, so received + reported dropped = recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tally::testing::CaptureAgent;
use tally::{FlushError, Tally, Unit};

const WAIT: Duration = Duration::from_secs(30);

/// Waits (bounded) until `cond` holds; returns whether it did.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn an_agent_stopped_and_restarted_mid_stream_receives_exact_totals() {
    let agent = CaptureAgent::start();
    let tally = Tally::builder()
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .shutdown_timeout(WAIT)
        .build()
        .expect("valid configuration");
    let counter = tally.counter("Ops", &[]);
    let latency = tally.histogram("Latency", Unit::Microseconds, &[]);
    let chunks = AtomicU64::new(0);
    const CHUNKS: u64 = 240;
    const PER_CHUNK: u64 = 500;
    std::thread::scope(|s| {
        s.spawn(|| {
            for c in 0..CHUNKS {
                for i in 0..PER_CHUNK {
                    counter.increment(1);
                    latency.record(c * PER_CHUNK + i);
                }
                chunks.fetch_add(1, Ordering::SeqCst);
                // Paces the stream over several flush intervals.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        assert!(eventually(WAIT, || agent.totals().batches_accepted >= 1));
        assert!(eventually(WAIT, || chunks.load(Ordering::SeqCst) >= CHUNKS / 3));
        agent.stop();
        // The SDK notices (its connection ends) while the stream goes on.
        assert!(eventually(WAIT, || !tally.stats().connected));
        assert!(eventually(WAIT, || chunks.load(Ordering::SeqCst) >= 2 * CHUNKS / 3));
        agent.restart();
    });
    tally
        .flush(WAIT)
        .expect("the restarted agent acknowledges everything");
    let stats = tally.shutdown();

    let t = agent.totals();
    assert_eq!(t.counter("Ops", &[]), CHUNKS * PER_CHUNK);
    assert_eq!(
        t.histogram("Latency", &[]).map(|h| h.len()),
        Some(CHUNKS * PER_CHUNK)
    );
    assert_eq!(t.dropped_samples(), 0);
    assert_eq!(stats.dropped_samples, 0);
    assert_eq!(stats.samples_lost_at_shutdown, 0);
    assert!(stats.disconnects >= 1 && stats.connects >= 2, "{stats:?}");
}

#[test]
fn past_the_bound_received_plus_reported_dropped_equals_recorded() {
    let agent = CaptureAgent::start();
    let tally = Tally::builder()
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .max_unsent_bytes(4096)
        .shutdown_timeout(WAIT)
        .build()
        .expect("valid configuration");
    let fam = tally.counter_family("Hits", &["Key"]);
    let mut recorded = 0u64;
    let mut record = |from: u64, to: u64| {
        for k in from..to {
            fam.increment(&[&format!("k{k}")], 1);
            recorded += 1;
        }
    };
    record(0, 50);
    tally.flush(WAIT).expect("agent acknowledges");
    agent.stop();
    // Each flush seals what was recorded; with the agent away the outbox overflows its
    // 4 KiB bound and drops its oldest batches.
    for wave in 0..4 {
        record(100 + wave * 200, 300 + wave * 200);
        assert_eq!(
            tally.flush(Duration::from_millis(300)),
            Err(FlushError::TimedOut(Duration::from_millis(300)))
        );
    }
    let dropped = tally.stats().dropped_samples;
    assert!(dropped > 0, "the bound was exceeded: {:?}", tally.stats());
    agent.restart();
    record(2000, 2050);
    tally.flush(WAIT).expect("the restarted agent acknowledges");
    let stats = tally.shutdown();

    let t = agent.totals();
    assert_eq!(t.dropped_samples(), stats.dropped_samples);
    assert_eq!(t.samples() + t.dropped_samples(), recorded);
    assert_eq!(stats.samples_lost_at_shutdown, 0);
}

#[test]
fn an_agent_that_closes_connections_without_answering_is_retried_with_a_growing_backoff() {
    // What an agent whose write-ahead log is full, or that refuses a frame's header, looks
    // like to the SDK: every connection is accepted, then closed with no ack.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("address");
    let tally = Tally::builder()
        .agent(format!("tcp://{addr}"))
        .flush_interval(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    tally.counter("Hits", &[]).increment(1);
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut accepted = 0u32;
    while started.elapsed() < window && accepted < 1000 {
        match listener.accept() {
            Ok((conn, _)) => {
                accepted += 1;
                drop(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept failed: {e}"),
        }
    }
    // Had each accepted connection reset the backoff, the SDK would come back every 50-100 ms
    // (30 or more connections in the window), resending its whole outbox each time. Growing
    // from 50 ms and doubling, the delays add up past 3 s after about six tries. A slower
    // machine only makes fewer.
    assert!(
        (1..=12).contains(&accepted),
        "{accepted} connections in {window:?}"
    );
    assert_eq!(tally.stats().batches_acked, 0);
}

#[test]
fn batches_an_agent_never_acknowledges_are_sent_again_on_a_new_connection_after_the_ack_timeout() {
    // An agent that takes the bytes and never answers (a connection left in its accept
    // backlog, a wedged process): the SDK must not wait on that connection for ever.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        use std::io::Read;
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut conns = Vec::new();
        let mut first_bytes = Vec::new();
        // Bounded: two connections, or 20 s.
        while conns.len() < 2 && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut c, _)) => {
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut b = [0u8; 12];
                    let got = c.read_exact(&mut b).is_ok();
                    first_bytes.push(got);
                    conns.push(c);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        first_bytes
    });
    let tally = Tally::builder()
        .agent(format!("tcp://{addr}"))
        .flush_interval(Duration::from_secs(1))
        .ack_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    tally.counter("Hits", &[]).increment(3);
    let sent_twice = server.join().expect("server thread");
    assert_eq!(
        sent_twice,
        vec![true, true],
        "the batch arrives on a first and, after the ack timeout, a second connection"
    );
    let stats = tally.stats();
    assert!(stats.ack_timeouts >= 1, "{stats:?}");
    assert_eq!(stats.batches_acked, 0);
}
