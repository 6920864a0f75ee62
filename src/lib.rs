//! ditto: personalize a chat language model to one person from a handful of their
//! writing samples (DITTO, Shaikh et al. 2024). This crate holds the CPU runtime
//! (model loading, tokenization, forward pass, generation) behind the `ditto` binary.

pub mod atomic;
pub mod bench;
pub mod cli;
pub mod data;
pub mod judge;
pub mod kernels;
pub mod model;
pub mod sample;
pub mod tokenize;
pub mod train;

#[cfg(test)]
mod testutil;
