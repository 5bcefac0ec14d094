//! Cross-validation folds grouped by sample: every row of one sample (all its steps and
//! positions) lands in the same fold, so a probe is never tested on a sample it saw in
//! training. Fold assignment depends only on the seed and the set of sample ids.

use rand::seq::SliceRandom;

use crate::rng;

/// The rng stream used to shuffle groups into folds (kept apart from other draws).
const FOLD_STREAM: u64 = 0x464F_4C44; // "FOLD"

/// Rows assigned to `k` folds by group.
#[derive(Debug, Clone)]
pub struct GroupFolds {
    /// Fold of each row, in input row order.
    pub fold_of_row: Vec<usize>,
    /// Number of folds.
    pub k: usize,
    /// Number of distinct groups.
    pub n_groups: usize,
}

impl GroupFolds {
    /// Shuffles the distinct groups with `seed` and deals them round-robin into `k` folds,
    /// so fold sizes differ by at most one group.
    pub fn new(groups: &[u32], k: usize, seed: u64) -> crate::Result<GroupFolds> {
        let mut distinct: Vec<u32> = groups.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if k < 2 {
            return Err(crate::Error::Invalid(format!(
                "folds: need at least 2 folds for cross-validation, got {k}"
            )));
        }
        if distinct.len() < k {
            return Err(crate::Error::Invalid(format!(
                "folds: {} distinct samples (groups) cannot fill {k} folds without splitting a \
                 sample across train and test; use --folds {} or fewer, or record more samples",
                distinct.len(),
                distinct.len().max(2)
            )));
        }
        distinct.shuffle(&mut rng::stream(seed, FOLD_STREAM));
        let fold_of_group: std::collections::HashMap<u32, usize> = distinct
            .iter()
            .enumerate()
            .map(|(i, &g)| (g, i % k))
            .collect();
        let fold_of_row = groups.iter().map(|g| fold_of_group[g]).collect();
        Ok(GroupFolds {
            fold_of_row,
            k,
            n_groups: distinct.len(),
        })
    }

    /// A row order that puts fold 0's rows first, then fold 1's, ... (stable within a
    /// fold), and the row range each fold occupies in that order.
    pub fn fold_order(&self) -> (Vec<usize>, Vec<std::ops::Range<usize>>) {
        let mut order: Vec<usize> = (0..self.fold_of_row.len()).collect();
        order.sort_by_key(|&i| self.fold_of_row[i]);
        let mut ranges = Vec::with_capacity(self.k);
        let mut start = 0;
        for f in 0..self.k {
            let len = self.fold_of_row.iter().filter(|&&g| g == f).count();
            ranges.push(start..start + len);
            start += len;
        }
        (order, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_group_is_in_two_folds_and_folds_are_balanced() {
        // 37 samples, each with a varying number of rows (steps x positions).
        let groups: Vec<u32> = (0..37u32)
            .flat_map(|g| std::iter::repeat_n(g * 3 + 1, (g % 5 + 1) as usize))
            .collect();
        let folds = GroupFolds::new(&groups, 5, 11).unwrap();
        let mut fold_of = std::collections::HashMap::new();
        for (g, &f) in groups.iter().zip(&folds.fold_of_row) {
            assert_eq!(*fold_of.entry(*g).or_insert(f), f, "group {g} split");
        }
        let mut per_fold = [0usize; 5];
        for f in fold_of.values() {
            per_fold[*f] += 1;
        }
        assert!(per_fold.iter().all(|&c| c == 7 || c == 8), "{per_fold:?}");
        assert_eq!(folds.n_groups, 37);
        // Deterministic by seed, different across seeds.
        assert_eq!(
            GroupFolds::new(&groups, 5, 11).unwrap().fold_of_row,
            folds.fold_of_row
        );
        assert_ne!(
            GroupFolds::new(&groups, 5, 12).unwrap().fold_of_row,
            folds.fold_of_row
        );
        // fold_order lists each fold contiguously.
        let (order, ranges) = folds.fold_order();
        for (f, r) in ranges.iter().enumerate() {
            assert!(order[r.clone()].iter().all(|&i| folds.fold_of_row[i] == f));
        }
        assert_eq!(ranges.last().unwrap().end, groups.len());
    }

    #[test]
    fn too_few_groups_is_an_error_naming_the_counts() {
        let err = GroupFolds::new(&[1, 1, 2, 2, 3], 5, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 distinct samples") && err.contains("5 folds"),
            "{err}"
        );
    }
}
