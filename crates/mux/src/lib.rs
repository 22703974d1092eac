//! underpass-mux
