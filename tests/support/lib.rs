//! Builders for end-to-end tests: edge, connector and real origins on loopback.
