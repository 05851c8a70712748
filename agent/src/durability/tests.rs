//! Unit tests of the write-ahead log: record format, bounds, release, replay.

use super::*;
use proptest::prelude::*;
use tally::wire::{encode_batch, Batch, ProcessIdentity, HEADER_LEN};

fn payload(instance_id: u64, sequence: u64) -> Vec<u8> {
    let b = Batch {
        process: ProcessIdentity {
            instance_id,
            pid: 1,
            service: "s".into(),
            environment: "e".into(),
            host: "h".into(),
        },
        sequence,
        start_unix_ms: 1,
        end_unix_ms: 2,
        drops: Default::default(),
        series: vec![],
    };
    let mut out = Vec::new();
    encode_batch(&b, &mut out).unwrap();
    out.split_off(HEADER_LEN)
}

fn open(dir: &Path, max_bytes: u64) -> (Arc<Wal>, Leftovers) {
    let c = DurabilityConfig {
        dir: dir.display().to_string(),
        max_bytes,
        ..DurabilityConfig::default()
    };
    Wal::open(&c, &Stats::new()).unwrap()
}

proptest! {
    #[test]
    fn records_read_back_as_written_and_any_truncation_is_caught(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut file = Vec::new();
        let mut buf = Vec::new();
        for p in &payloads {
            encode_record(p, &mut buf);
            file.extend_from_slice(&buf);
        }
        let mut pos = 0;
        for p in &payloads {
            prop_assert_eq!(read_record(&file, &mut pos), RecordRead::Record(p.as_slice()));
        }
        prop_assert_eq!(read_record(&file, &mut pos), RecordRead::End);
        // Cut the file anywhere inside its last record: the intact ones still read, the torn
        // one is reported, never returned.
        let last = file.len() - RECORD_HEADER - payloads.last().unwrap().len();
        let at = last + cut.index(file.len() - last);
        let torn = &file[..at];
        let mut pos = 0;
        for p in &payloads[..payloads.len() - 1] {
            prop_assert_eq!(read_record(torn, &mut pos), RecordRead::Record(p.as_slice()));
        }
        let end = read_record(torn, &mut pos);
        prop_assert!(end == RecordRead::Corrupt || (at == last && end == RecordRead::End));
    }
}

#[test]
fn a_flipped_bit_fails_the_record_check() {
    let mut buf = Vec::new();
    encode_record(b"hello world", &mut buf);
    buf[RECORD_HEADER + 3] ^= 1;
    assert_eq!(read_record(&buf, &mut 0), RecordRead::Corrupt);
}

#[test]
fn segment_names_round_trip_and_other_files_are_ignored() {
    let n = segment_name(1_700_000_000, 7);
    let s = SegmentName::parse(&n, PathBuf::from(&n)).unwrap();
    assert_eq!((s.period_start, s.generation), (1_700_000_000, 7));
    for other in ["LOCK", "p1-g.wal", "x1-g2.wal", "p1-g2.tmp"] {
        assert!(
            SegmentName::parse(other, PathBuf::new()).is_none(),
            "{other}"
        );
    }
}

#[test]
fn a_second_agent_cannot_share_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = open(tmp.path(), 1 << 20);
    let c = DurabilityConfig {
        dir: tmp.path().display().to_string(),
        ..DurabilityConfig::default()
    };
    let err = Wal::open(&c, &Stats::new()).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("its own directory"));
}

#[test]
fn past_max_bytes_batches_are_refused_and_counted_until_a_period_is_released() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = Stats::new();
    let c = DurabilityConfig {
        dir: tmp.path().display().to_string(),
        max_bytes: 1000,
        ..DurabilityConfig::default()
    };
    let (wal, _) = Wal::open(&c, &stats).unwrap();
    let p = vec![7u8; 400];
    wal.check_room(p.len()).unwrap();
    wal.append(10, &p).unwrap();
    wal.check_room(p.len()).unwrap();
    wal.append(20, &p).unwrap();
    assert_eq!(wal.check_room(p.len()), Err(Full));
    assert_eq!(
        stats.counter_value(
            "tally_agent_wal_refused_batches_total",
            &[("reason", "max_bytes")]
        ),
        1
    );
    // Period 10 goes to the sink and settles: its segment is deleted and room comes back.
    wal.handed_off(10);
    wal.settle(1);
    assert_eq!(wal.bytes(), (RECORD_HEADER + 400) as u64);
    wal.check_room(p.len()).unwrap();
    let files: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    assert_eq!(files, vec![segment_name(20, 1)]);
    assert_eq!(stats.gauge_value("tally_agent_wal_segments", &[]), 1);
}

#[test]
fn a_restart_replays_every_logged_batch_once_and_removes_the_old_generation() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, left) = open(tmp.path(), 1 << 20);
        assert!(left.is_empty());
        wal.append(100, &payload(1, 1)).unwrap();
        wal.append(100, &payload(2, 1)).unwrap();
        wal.append(110, &payload(1, 2)).unwrap();
        // A torn tail, as a write cut short by SIGKILL leaves it.
        let mut f = File::options()
            .append(true)
            .open(tmp.path().join(segment_name(110, 1)))
            .unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
    }
    // A crash during an earlier replay left a copy of one batch in a newer generation.
    std::fs::write(tmp.path().join(segment_name(100, 2)), {
        let mut b = Vec::new();
        encode_record(&payload(2, 1), &mut b);
        b
    })
    .unwrap();
    let stats = Stats::new();
    let c = DurabilityConfig {
        dir: tmp.path().display().to_string(),
        ..DurabilityConfig::default()
    };
    let (wal, left) = Wal::open(&c, &stats).unwrap();
    assert_eq!(left.oldest_period(), Some(100));
    assert_eq!(left.len(), 3);
    let mut seen = Vec::new();
    let n = wal
        .replay(left, |p| {
            let key = segment::batch_key(p).unwrap();
            seen.push(key);
            // Re-logged under the new generation, as the intake does.
            wal.append(if key.1 == 2 { 110 } else { 100 }, p).unwrap();
            true
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(seen, vec![(1, 1), (2, 1), (1, 2)]);
    assert_eq!(
        stats.counter_value("tally_agent_wal_replayed_duplicates_total", &[]),
        1
    );
    assert_eq!(
        stats.counter_value("tally_agent_wal_corrupt_records_total", &[]),
        1
    );
    let mut files: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    files.sort();
    assert_eq!(files, vec![segment_name(100, 3), segment_name(110, 3)]);
    assert_eq!(
        wal.bytes(),
        3 * (RECORD_HEADER + payload(1, 1).len()) as u64
    );
}
