//! Head-to-head win rates (the paper's Table 1): for one author, the share of judged
//! pairs each method wins against each other method (a tie is half a win), and a
//! method's average over its opponents; across authors, the mean ± standard error.

use crate::judge::Verdict;

/// Wins of every method against every other, for one author.
#[derive(Clone, Debug)]
pub struct Tally {
    methods: usize,
    /// `points[i * m + j]`: points of method i in its games against method j.
    points: Vec<f64>,
    games: Vec<usize>,
}

impl Tally {
    pub fn new(methods: usize) -> Tally {
        Tally {
            methods,
            points: vec![0.0; methods * methods],
            games: vec![0; methods * methods],
        }
    }

    /// Record one judged pair: output A came from method `a`, B from method `b`.
    pub fn add(&mut self, a: usize, b: usize, verdict: Verdict) {
        assert!(a != b && a < self.methods && b < self.methods);
        let pa = verdict.points_a();
        self.points[a * self.methods + b] += pa;
        self.points[b * self.methods + a] += 1.0 - pa;
        self.games[a * self.methods + b] += 1;
        self.games[b * self.methods + a] += 1;
    }

    /// Win rate (%) of method `i` against method `j`; `None` before any game.
    pub fn head_to_head(&self, i: usize, j: usize) -> Option<f64> {
        let g = self.games[i * self.methods + j];
        (g > 0).then(|| 100.0 * self.points[i * self.methods + j] / g as f64)
    }

    /// Method `i`'s average head-to-head win rate (%) over the opponents it met.
    pub fn average(&self, i: usize) -> Option<f64> {
        let rates: Vec<f64> = (0..self.methods)
            .filter(|&j| j != i)
            .filter_map(|j| self.head_to_head(i, j))
            .collect();
        (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
    }
}

/// Mean and standard error of the mean (sample standard deviation / √n; 0 for n = 1).
pub fn mean_sem(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() == 1 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{A, B, Tie};

    #[test]
    fn rates_of_m_methods_sum_to_fifty_times_m() {
        let mut t = Tally::new(3);
        // Method 0 beats 1 twice; 1 and 2 tie once and 2 wins once; 0 vs 2: 2 wins.
        t.add(0, 1, A);
        t.add(1, 0, B);
        t.add(1, 2, Tie);
        t.add(2, 1, A);
        t.add(0, 2, B);
        assert_eq!(t.head_to_head(0, 1), Some(100.0));
        assert_eq!(t.head_to_head(1, 0), Some(0.0));
        assert_eq!(t.head_to_head(1, 2), Some(25.0));
        assert_eq!(t.head_to_head(2, 1), Some(75.0));
        assert_eq!(t.head_to_head(2, 0), Some(100.0));
        assert_eq!(t.average(0), Some(50.0));
        assert_eq!(t.average(1), Some(12.5));
        assert_eq!(t.average(2), Some(87.5));
        let sum: f64 = (0..3).map(|i| t.average(i).unwrap()).sum();
        assert_eq!(sum, 50.0 * 3.0);
    }

    #[test]
    fn no_games_no_rate() {
        let t = Tally::new(2);
        assert_eq!(t.head_to_head(0, 1), None);
        assert_eq!(t.average(0), None);
    }

    #[test]
    fn mean_and_standard_error() {
        let (m, s) = mean_sem(&[40.0, 60.0, 50.0, 70.0]);
        assert_eq!(m, 55.0);
        // sample variance 166.67, / 4 = 41.67, sqrt = 6.455
        assert!((s - 6.454_972).abs() < 1e-6, "{s}");
        assert_eq!(mean_sem(&[42.0]), (42.0, 0.0));
    }
}
