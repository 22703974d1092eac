//! underpass-connector
