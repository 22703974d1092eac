//! underpass-edge
pub mod fetch;
