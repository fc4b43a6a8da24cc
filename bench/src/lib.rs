//! Shared helpers for Coffer's benchmarks: medians and spreads, and the table they print.

#![forbid(unsafe_code)]

use std::time::Duration;

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median.
    pub median: Duration,
    /// Fastest sample.
    pub min: Duration,
    /// Slowest sample.
    pub max: Duration,
}

/// Summarises samples; `None` when there are none.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    };
    Some(Summary {
        median,
        min: sorted[0],
        max: sorted[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            summarize(&ms(&[3, 1, 2])).unwrap().median,
            Duration::from_millis(2)
        );
        assert_eq!(
            summarize(&ms(&[4, 1, 2, 3])).unwrap().median,
            Duration::from_millis(2500) / 1000
        );
        assert!(summarize(&[]).is_none());
    }
}
