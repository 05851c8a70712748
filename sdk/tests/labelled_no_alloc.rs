//! The labelled path allocates nothing for label sets it has seen before.
//!
//! This test binary installs a global allocator that counts the allocations of the thread
//! that asks, so the flusher thread's own allocations do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use tally::{Tally, Unit};

thread_local! {
    /// Allocations made by this thread while counting is on; `None` while it is off.
    static ALLOCATIONS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Counts allocations per thread, then defers to the system allocator.
struct Counting;

fn count() {
    // `try_with` fails only during thread-local teardown, when nothing is being counted.
    let _ = ALLOCATIONS.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only a const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations_of(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|c| c.set(Some(0)));
    f();
    ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0)
}

#[test]
fn recording_a_seen_label_set_allocates_nothing() {
    let tally = Tally::builder()
        .agent("127.0.0.1:9")
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .expect("valid configuration");
    let latency = tally.histogram_family(
        "ResponseTime",
        Unit::Nanoseconds,
        &["Route", "Method", "Status"],
    );
    let requests = tally.counter_family("RequestCount", &["Route", "Method", "Status"]);
    let routes = ["/orders/{id}", "/cart", "/"];
    let record_all = |round: u64| {
        for (i, route) in routes.iter().enumerate() {
            latency.record(&[route, "GET", "2xx"], 1_000 + round * 977 + i as u64);
            latency.record_duration(&[route, "POST", "5xx"], Duration::from_micros(round + 1));
            requests.increment(&[route, "GET", "2xx"], 1);
        }
    };
    // The first round meets each set for the first time: it registers series and caches them.
    let first = allocations_of(|| record_all(0));
    assert!(
        first > 0,
        "the counting allocator sees first-time registrations"
    );
    // Round 1 once more before counting: a histogram allocates a chunk the first time it sees
    // a value in a new power-of-two range, a one-time cost of the cell, not of the lookup.
    record_all(1);
    let later = allocations_of(|| {
        for round in 1..1_000 {
            record_all(round % 2);
        }
    });
    assert_eq!(
        later, 0,
        "recording seen label sets allocated {later} times"
    );
    // The records arrived.
    let stats = tally.shutdown();
    assert_eq!(stats.label_overflows, 0);
}

#[test]
fn a_label_set_seen_by_another_thread_is_adopted_without_allocating_twice() {
    let tally = Tally::builder()
        .agent("127.0.0.1:9")
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .expect("valid configuration");
    let requests = tally.counter_family("RequestCount", &["Route"]);
    std::thread::scope(|s| {
        s.spawn(|| requests.increment(&["/a"], 1));
    });
    // This thread never saw "/a": it takes it from the family's shared cache. Its first
    // call may grow this thread's cache table; every later call allocates nothing.
    requests.increment(&["/a"], 1);
    let later = allocations_of(|| {
        for _ in 0..1_000 {
            requests.increment(&["/a"], 1);
        }
    });
    assert_eq!(later, 0);
}
