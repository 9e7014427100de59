//! Summary statistics, computed the way vLLM's benchmark does with numpy: the mean, the
//! population standard deviation (`np.std`) and percentiles by linear interpolation between
//! the closest ranks (`np.percentile`'s default method).

use serde::Serialize;

/// Mean, median, p90, p99, standard deviation and maximum of a sample.
///
/// An empty sample summarizes to all zeros, as vLLM reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Arithmetic mean.
    pub mean: f64,
    /// 50th percentile.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Population standard deviation (numpy's `std`, `ddof = 0`).
    pub std: f64,
    /// Largest value.
    pub max: f64,
}

/// The `p`-th percentile (`0..=100`, clamped) of an ascending `sorted` sample, interpolated
/// linearly between the closest ranks like `numpy.percentile`; `0.0` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return 0.0;
    };
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let frac = rank - lo as f64;
    match (sorted.get(lo), sorted.get(lo + 1)) {
        (Some(&a), Some(&b)) => a + (b - a) * frac,
        (Some(&a), None) => a,
        _ if p <= 0.0 => first,
        _ => last,
    }
}

impl Summary {
    /// Summarizes `values` (any order; sorted in place). Non-finite values are dropped.
    pub fn of(values: &mut Vec<f64>) -> Summary {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        Summary {
            mean,
            median: percentile(values, 50.0),
            p90: percentile(values, 90.0),
            p99: percentile(values, 99.0),
            std: var.sqrt(),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [0, 50, 90, 99, 100]) = [1, 2.5, 3.7, 3.97, 4]
        let v = [1.0, 2.0, 3.0, 4.0];
        for (p, want) in [
            (0.0, 1.0),
            (50.0, 2.5),
            (90.0, 3.7),
            (99.0, 3.97),
            (100.0, 4.0),
        ] {
            assert!(
                close(percentile(&v, p), want),
                "p{p}: {}",
                percentile(&v, p)
            );
        }
        // numpy.percentile([15, 20, 35, 40, 50], [25, 50, 90, 99]) = [20, 35, 46, 49.6]
        let v = [15.0, 20.0, 35.0, 40.0, 50.0];
        for (p, want) in [(25.0, 20.0), (50.0, 35.0), (90.0, 46.0), (99.0, 49.6)] {
            assert!(
                close(percentile(&v, p), want),
                "p{p}: {}",
                percentile(&v, p)
            );
        }
        // numpy.percentile(range(101), 99) = 99; numpy.percentile(range(1000), 99) = 989.01
        let r: Vec<f64> = (0..=100).map(f64::from).collect();
        assert!(close(percentile(&r, 99.0), 99.0));
        let r: Vec<f64> = (0..1000).map(f64::from).collect();
        assert!(
            close(percentile(&r, 99.0), 989.01),
            "{}",
            percentile(&r, 99.0)
        );
        assert!(
            close(percentile(&r, 90.0), 899.1),
            "{}",
            percentile(&r, 90.0)
        );
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_matches_numpy() {
        // np.mean / np.std / np.median / np.percentile(., 90|99) / np.max of
        // [50, 15, 40, 35, 20]: 32, sqrt(166), 35, 46, 49.6, 50
        let mut v = vec![50.0, 15.0, 40.0, 35.0, 20.0];
        let s = Summary::of(&mut v);
        assert!(close(s.mean, 32.0));
        assert!(close(s.std, 166f64.sqrt()), "{}", s.std); // 12.8840987267...
        assert!(close(s.median, 35.0));
        assert!(close(s.p90, 46.0));
        assert!(close(s.p99, 49.6));
        assert_eq!(s.max, 50.0);
        // np.std([1, 2, 3, 4]) = 1.118033988749895
        let s = Summary::of(&mut vec![4.0, 1.0, 3.0, 2.0]);
        assert!(close(s.std, 1.118033988749895));
        assert!(close(s.median, 2.5));
        assert_eq!(Summary::of(&mut Vec::new()), Summary::default());
        let s = Summary::of(&mut vec![f64::NAN, 3.0]);
        assert_eq!((s.mean, s.max, s.p99), (3.0, 3.0, 3.0));
    }
}
