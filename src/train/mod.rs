//! Training: the LoRA training pass (forward with checkpoints, exact backward into
//! the adapter only), the optimizer, the SFT stage and the DITTO preference loop.

pub mod ditto;
pub mod format;
pub mod loss;
pub mod optim;
pub mod pairs;
pub mod pass;
pub mod sft;

#[cfg(test)]
mod ditto_tests;
#[cfg(test)]
mod tests;
