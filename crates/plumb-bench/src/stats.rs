//! Summaries of measured latencies.

/// The `p`th percentile of `values` by nearest rank, as the Python bench computed it:
/// the element at `round(p/100 * (n-1))` of the sorted values, ties rounded to even. NaN when
/// there are no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut ordered = values.to_vec();
    ordered.sort_by(f64::total_cmp);
    let Some(last) = ordered.len().checked_sub(1) else {
        return f64::NAN;
    };
    let k = (p / 100.0 * last as f64)
        .round_ties_even()
        .clamp(0.0, last as f64) as usize;
    ordered[k]
}

/// The largest of `values`, NaN when there are none.
pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().reduce(f64::max).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_nearest_rank_with_ties_to_even() {
        let v: Vec<f64> = (1..=50).rev().map(f64::from).collect();
        // 0.5 * 49 = 24.5 rounds to 24 (even), the 25th value.
        assert_eq!(percentile(&v, 50.0), 25.0);
        // 0.95 * 49 = 46.55 rounds to 47, the 48th value.
        assert_eq!(percentile(&v, 95.0), 48.0);
        assert_eq!(percentile(&v, 100.0), 50.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[0.3, 0.1], 50.0), 0.1);
        assert_eq!(percentile(&[2.0, 9.0, 1.0, 4.0, 3.0], 50.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn max_of_nothing_is_nan() {
        assert_eq!(max(&[1.0, 3.0, 2.0]), 3.0);
        assert!(max(&[]).is_nan());
    }
}
