//! Per-label cardinality limits: past a label's limit, only that label's value becomes
//! [`OVERFLOW_VALUE`]; the other labels keep theirs.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::conventions::OVERFLOW_VALUE;
use crate::wire::MAX_LABEL_VALUE_LEN;

/// The values seen so far for each label key of one family, and each key's limit.
#[derive(Debug)]
pub(crate) struct Limiter {
    keys: Vec<String>,
    limits: Vec<usize>,
    known: Vec<HashTable<Box<str>>>,
    hasher: DefaultHashBuilder,
}

impl Limiter {
    pub(crate) fn new(keys: &[String], default_limit: usize) -> Self {
        Limiter {
            keys: keys.to_vec(),
            limits: vec![default_limit; keys.len()],
            known: keys.iter().map(|_| HashTable::new()).collect(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Sets the limit of `key`. Values already admitted stay admitted. Returns false when the
    /// family has no such key.
    pub(crate) fn set_limit(&mut self, key: &str, limit: usize) -> bool {
        match self.keys.iter().position(|k| k == key) {
            Some(i) => {
                self.limits[i] = limit;
                true
            }
            None => false,
        }
    }

    /// Resolves `values` (one per key, in key order) into `out`: each value is kept when it
    /// is already known or its label is under its limit, and becomes [`OVERFLOW_VALUE`]
    /// otherwise. A missing, empty or over-long value (longer than CloudWatch's 1024 bytes)
    /// also becomes the overflow value. Returns how many values were replaced.
    ///
    /// Allocates only when a new value is admitted.
    pub(crate) fn resolve<'a>(&mut self, values: &[&'a str], out: &mut [&'a str]) -> u64 {
        debug_assert_eq!(out.len(), self.keys.len());
        let mut replaced = 0;
        for (i, slot) in out.iter_mut().enumerate() {
            let v = values.get(i).copied().unwrap_or("");
            if v.is_empty() || v.len() > MAX_LABEL_VALUE_LEN {
                *slot = OVERFLOW_VALUE;
                replaced += 1;
                continue;
            }
            let h = self.hasher.hash_one(v);
            let table = &mut self.known[i];
            if table.find(h, |k| &**k == v).is_some() {
                *slot = v;
            } else if table.len() < self.limits[i] {
                let hasher = &self.hasher;
                table.insert_unique(h, v.into(), |k| hasher.hash_one(&**k));
                *slot = v;
            } else {
                *slot = OVERFLOW_VALUE;
                replaced += 1;
            }
        }
        replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i}")).collect()
    }

    #[test]
    fn a_label_past_its_limit_overflows_alone() {
        let mut l = Limiter::new(&keys(2), 2);
        let mut out = [""; 2];
        assert_eq!(l.resolve(&["a", "x"], &mut out), 0);
        assert_eq!(l.resolve(&["b", "x"], &mut out), 0);
        assert_eq!(l.resolve(&["c", "x"], &mut out), 1);
        assert_eq!(out, [OVERFLOW_VALUE, "x"]);
        assert_eq!(l.resolve(&["a", "y"], &mut out), 0);
        assert_eq!(out, ["a", "y"]);
    }

    #[test]
    fn missing_empty_and_overlong_values_become_the_overflow_value() {
        let mut l = Limiter::new(&keys(3), 10);
        let mut out = [""; 3];
        let long = "v".repeat(MAX_LABEL_VALUE_LEN + 1);
        assert_eq!(l.resolve(&["", &long], &mut out), 3);
        assert_eq!(out, [OVERFLOW_VALUE; 3]);
    }

    #[test]
    fn a_per_key_limit_overrides_the_default() {
        let mut l = Limiter::new(&keys(1), 100);
        assert!(l.set_limit("k0", 1));
        assert!(!l.set_limit("nope", 1));
        let mut out = [""];
        l.resolve(&["a"], &mut out);
        l.resolve(&["b"], &mut out);
        assert_eq!(out, [OVERFLOW_VALUE]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_limiter_keeps_other_labels(
            rows in proptest::collection::vec(proptest::collection::vec("[a-e]{1,2}", 3), 1..200),
            limits in proptest::collection::vec(0usize..8, 3),
        ) {
            let mut l = Limiter::new(&keys(3), 1000);
            for (i, lim) in limits.iter().enumerate() {
                l.set_limit(&format!("k{i}"), *lim);
            }
            let mut admitted: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); 3];
            for row in &rows {
                let vals: Vec<&str> = row.iter().map(String::as_str).collect();
                let mut out = [""; 3];
                let replaced = l.resolve(&vals, &mut out);
                let mut expect_replaced = 0;
                for i in 0..3 {
                    let known = admitted[i].contains(row[i].as_str());
                    if known || admitted[i].len() < limits[i] {
                        admitted[i].insert(row[i].clone());
                        // A label under its limit keeps its value whatever the others do.
                        prop_assert_eq!(out[i], row[i].as_str());
                    } else {
                        prop_assert_eq!(out[i], OVERFLOW_VALUE);
                        expect_replaced += 1;
                    }
                }
                prop_assert_eq!(replaced, expect_replaced);
            }
            for i in 0..3 {
                prop_assert!(admitted[i].len() <= limits[i]);
            }
        }
    }
}
