//! Fuzzes the agent's view of one frame: header checks, then the payload decoder.
//! Any input may be refused; none may panic, hang or allocate past the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::wire::{
    decode_ack, decode_batch, BatchView, FrameHeader, FrameKind, Limits, ParseMemo, ValueView,
    HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame_len: 1 << 20,
        max_histogram_counts_per_batch: 1 << 20,
        ..Limits::default()
    };
    if data.len() < HEADER_LEN {
        return;
    }
    let header: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().expect("length checked");
    let Ok(h) = FrameHeader::parse(header, &limits) else {
        return;
    };
    let payload = &data[HEADER_LEN..];
    let payload = &payload[..payload.len().min(h.len as usize)];
    match h.kind {
        FrameKind::Batch => {
            // The agent's path: the borrowing view, every descriptor decoded, every
            // histogram walked. A view may exist where decode_batch refuses (a string that is
            // not UTF-8), never the other way round.
            if let Ok(view) = BatchView::parse(payload, &limits) {
                let mut labels = Vec::new();
                for s in view.series() {
                    labels.clear();
                    let _ = s.descriptor.decode(&mut labels);
                    let h = match s.value {
                        ValueView::Histogram(h) => Some(h),
                        ValueView::Event { values, .. } => values,
                        _ => None,
                    };
                    if let Some(h) = h {
                        // The buckets the parse recorded: non-zero, strictly increasing (the
                        // merge relies on it), adding up to the histogram's total.
                        let buckets = h.buckets().expect("walks");
                        assert!(buckets.iter().all(|&(_, c)| c > 0));
                        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
                        assert_eq!(buckets.last().map(|b| b.0), h.max_bucket_value());
                        let n: u64 = buckets.iter().map(|&(_, c)| c).fold(0, u64::saturating_add);
                        assert_eq!(n, h.len());
                    }
                }
            } else {
                assert!(decode_batch(payload, &limits).is_err());
            }
            // A memo of an accepted batch (what an agent session keeps) changes no parse of
            // the next: the same payload with one byte changed, where the fuzzed bytes say.
            let mut memo = ParseMemo::new();
            if BatchView::parse_remembering(payload, &limits, &mut memo).is_ok() {
                if let Some(&last) = payload.last() {
                    let mut next = payload.to_vec();
                    let at = (payload.len() / 2 + usize::from(last)) % next.len();
                    next[at] ^= last | 1;
                    for bytes in [&next[..], payload] {
                        // Compared as text: an error may carry a NaN (a bad scale), which is
                        // not equal to itself.
                        let plain = format!("{:?}", BatchView::parse(bytes, &limits));
                        let remembered = format!(
                            "{:?}",
                            BatchView::parse_remembering(bytes, &limits, &mut memo)
                        );
                        assert_eq!(plain, remembered);
                    }
                }
            }
            if let Ok(batch) = decode_batch(payload, &limits) {
                // Whatever decodes must re-encode to something that decodes to the same batch.
                let mut again = Vec::new();
                tally::wire::encode_batch(&batch, &mut again).expect("re-encode");
                let round = decode_batch(&again[HEADER_LEN..], &limits).expect("re-decode");
                assert_eq!(round.series.len(), batch.series.len());
                assert_eq!(round.sequence, batch.sequence);
            }
        }
        FrameKind::Ack => {
            let _ = decode_ack(payload);
        }
    }
});
