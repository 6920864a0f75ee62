//! Training: the LoRA training pass (forward with checkpoints, exact backward into
//! the adapter only) and the losses built on it.

pub mod optim;
pub mod pass;

#[cfg(test)]
mod tests;
