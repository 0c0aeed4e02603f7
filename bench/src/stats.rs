//! Small statistics: median and spread over repetitions, percentiles over
//! latency samples. Every function takes unsorted input and ignores NaN.

/// Sorted copy without NaN.
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The median (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let v = sorted(values);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

pub fn min(values: &[f64]) -> Option<f64> {
    sorted(values).first().copied()
}

pub fn max(values: &[f64]) -> Option<f64> {
    sorted(values).last().copied()
}

/// Nearest-rank percentile, `p` in [0, 100]: the smallest sample such that at
/// least p % of the samples are less than or equal to it.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let v = sorted(values);
    if v.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // The rank is at most n, so the cast cannot overflow.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// The arithmetic mean.
pub fn mean(values: &[f64]) -> Option<f64> {
    let v = sorted(values);
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn spread() {
        assert_eq!(min(&[2.0, 1.0, 3.0]), Some(1.0));
        assert_eq!(max(&[2.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(mean(&[1.0, 2.0, 3.0]), Some(2.0));
    }
}
