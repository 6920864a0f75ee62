//! Training: the LoRA training pass (forward with checkpoints, exact backward into
//! the adapter only) and the losses built on it.

pub mod format;
pub mod optim;
pub mod pass;
pub mod sft;

#[cfg(test)]
mod tests;
