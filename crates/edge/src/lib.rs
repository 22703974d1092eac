//! underpass-edge
