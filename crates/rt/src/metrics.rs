//! Metrics: both programs keep their own `prometheus_client` registry (prefix `underpass`)
//! and serve it on the admin listener's `/metrics`; this module holds what they share.

pub use prometheus_client;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `underpass_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    program: String,
    version: String,
}

/// Encode `registry` in the text format (OpenMetrics, which Prometheus reads).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Register `build_info{program, version} 1` (`underpass_build_info` under the usual prefix).
pub fn register_build_info(registry: &mut Registry, program: &str) {
    let family = Family::<BuildLabels, Gauge>::default();
    family
        .get_or_create(&BuildLabels {
            program: program.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    registry.register("build_info", "The program and its version", family);
}
