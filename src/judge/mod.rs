//! Judges answer "which of A and B did this author write?" for two outputs to the same
//! prompt. `ditto bench` runs every pair of methods through one of them.

pub mod llm;
pub mod style;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// A judge's decision for one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    A,
    B,
    Tie,
}

impl Verdict {
    /// The verdict with A and B swapped (for judging the other order).
    pub fn swapped(self) -> Verdict {
        match self {
            Verdict::A => Verdict::B,
            Verdict::B => Verdict::A,
            Verdict::Tie => Verdict::Tie,
        }
    }

    /// The paper's rule for a pair judged in both orders: agreement wins, anything else
    /// is a tie. `second` is the verdict of the swapped order, already mapped back.
    pub fn combine(first: Verdict, second: Verdict) -> Verdict {
        if first == second { first } else { Verdict::Tie }
    }

    /// A's points: 1 for a win, ½ for a tie, 0 for a loss.
    pub fn points_a(self) -> f64 {
        match self {
            Verdict::A => 1.0,
            Verdict::Tie => 0.5,
            Verdict::B => 0.0,
        }
    }
}

/// One pair to judge.
#[derive(Clone, Copy, Debug)]
pub struct Case<'a> {
    /// The target author's id.
    pub author: &'a str,
    /// The prompt both outputs answer.
    pub prompt: &'a str,
    /// A held-out text by the author (never a test text), shown to judges that read one.
    pub reference: &'a str,
    pub a: &'a str,
    pub b: &'a str,
}

/// A verdict and what the judge saw on the way (scores, raw answers), kept in the raw
/// judgments file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    pub verdict: Verdict,
    pub detail: serde_json::Value,
}

/// A pairwise authorship judge.
pub trait Judge: Sync {
    /// Short name (`style`, `llm`), used in file names and reports.
    fn name(&self) -> &str;
    fn judge(&self, case: &Case) -> Result<Judgment>;
    /// What the judge counted so far (requests, malformed answers …), for the report.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::{self, A, B, Tie};

    #[test]
    fn both_orders_disagreement_is_a_tie() {
        assert_eq!(Verdict::combine(A, A), A);
        assert_eq!(Verdict::combine(B, B), B);
        assert_eq!(Verdict::combine(A, B), Tie);
        assert_eq!(Verdict::combine(Tie, A), Tie);
        // Judging (B, A) and answering "A" means the first output of the pair, B, won.
        assert_eq!(Verdict::combine(B, A.swapped()), B);
        assert_eq!(A.points_a() + A.swapped().points_a(), 1.0);
        assert_eq!(Tie.points_a(), 0.5);
    }
}
