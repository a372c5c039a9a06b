//! Data stages: corpus readers, context windows, activation store.

pub mod corpus;
pub mod store;
pub mod windows;
