//! `ditto bench`: the paper's Table 1 on any author set. Per author it trains what each
//! method needs, samples K outputs per test prompt, scores the author's held-out texts,
//! judges every pair of methods and reports head-to-head win rates.

pub mod dataset;
pub mod report;
pub mod run;
pub mod winrate;

use crate::train::ditto::Variant;
use anyhow::{Result, bail};

/// A way of writing like the author.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The base model.
    ZeroShot,
    /// The base model with the demonstrations as earlier chat turns.
    FewShot,
    /// The SFT adapter.
    Sft,
    /// A preference run (DITTO, SPIN or an ablation) on top of the SFT adapter.
    Preference(Variant),
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::ZeroShot,
        Method::FewShot,
        Method::Sft,
        Method::Preference(Variant::Spin),
        Method::Preference(Variant::Ditto),
        Method::Preference(Variant::NoReplay),
        Method::Preference(Variant::NoInterPolicy),
        Method::Preference(Variant::Upfront),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::ZeroShot => "zero-shot",
            Method::FewShot => "few-shot",
            Method::Sft => "sft",
            Method::Preference(Variant::Spin) => "spin",
            Method::Preference(Variant::Ditto) => "ditto",
            Method::Preference(Variant::NoReplay) => "ditto-no-replay",
            Method::Preference(Variant::NoInterPolicy) => "ditto-no-interpolicy",
            Method::Preference(Variant::Upfront) => "ditto-upfront",
        }
    }

    pub fn parse(name: &str) -> Result<Method> {
        match Method::ALL.into_iter().find(|m| m.name() == name) {
            Some(m) => Ok(m),
            None => bail!(
                "unknown method {name:?} (methods: {})",
                Method::ALL.map(Method::name).join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()).unwrap(), m);
        }
        let err = Method::parse("dito").unwrap_err().to_string();
        assert!(err.contains("unknown method \"dito\""), "{err}");
    }
}
