//! What the streams of every connection share ([`StreamContext`]), and the steps every kind
//! of stream takes: waiting for a service's policy, refusing with a Proxy-Status error.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;
use underpass_mux::{write_frame, IncomingStream};
use underpass_proto::{ProxyErrorReply, ServiceRef, StreamReply, RESET_CANCELLED};
use underpass_rt::Shutdown;
use underpass_transport::{Connection, SendStream};

use crate::config::ConnectorConfig;
use crate::dial::Dialer;
use crate::metrics::ConnectorMetrics;
use crate::origin::{OriginClient, OriginSettings};
use crate::outcome::StreamEnd;
use crate::policy::{Policies, ServiceOrigin};
use crate::resolve::SystemDnsError;

/// How long the origin client's connections get to end after the last stream, when the
/// connector stops.
const ORIGIN_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the streams of every connection share.
pub(crate) struct StreamContext {
    /// What a live reload replaces; each stream reads it once, when it starts.
    settings: RwLock<Arc<StreamSettings>>,
    /// The pooled HTTP client towards origins.
    pub(super) origin: OriginClient,
    /// The connector's metrics.
    pub(super) metrics: Arc<ConnectorMetrics>,
}

/// The part of the stream context a live reload (SIGHUP) replaces: routes, deny list, DNS,
/// limits. A stream keeps the snapshot it started with to its end.
pub(crate) struct StreamSettings {
    /// Route check, resolution, dialing.
    pub(super) dialer: Dialer,
    /// How long the edge has to send a stream's header (and a stream waits for its policy).
    pub(super) header_timeout: Duration,
    /// The per-connection stream limit.
    pub(super) max_streams: usize,
}

impl StreamSettings {
    /// What `config` says; names are resolved as its `[dns]` says.
    fn new(config: &ConnectorConfig, metrics: &ConnectorMetrics) -> Result<Self, SystemDnsError> {
        Ok(StreamSettings {
            dialer: Dialer::from_config(config)?.with_metrics(metrics.dial_metrics()),
            header_timeout: config.timeouts.header,
            max_streams: config.max_streams,
        })
    }
}

impl StreamContext {
    /// The route table, resolver and origin client `config` describes; origin connections
    /// run in `origin_tasks`.
    pub(crate) fn new(
        config: &ConnectorConfig,
        origin_tasks: Shutdown,
        metrics: Arc<ConnectorMetrics>,
    ) -> Result<Self, SystemDnsError> {
        let origin = OriginClient::new(
            OriginSettings {
                tls_handshake_timeout: config.timeouts.tls_handshake,
                response_header_timeout: config.timeouts.response_header,
                pool_idle_timeout: config.timeouts.origin_idle,
                http2: config.timeouts.origin_http2,
                ..OriginSettings::default()
            },
            origin_tasks,
        );
        Ok(StreamContext {
            settings: RwLock::new(Arc::new(StreamSettings::new(config, &metrics)?)),
            origin,
            metrics,
        })
    }

    /// The settings new streams use now.
    pub(crate) fn settings(&self) -> Arc<StreamSettings> {
        // A poisoned lock means a panic while swapping an `Arc`: the value is still whole.
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Build the settings of `config` (routes, deny list, DNS, limits) and use them for every
    /// new stream; streams already running keep theirs. Nothing changes on error.
    pub(crate) fn reload(&self, config: &ConnectorConfig) -> Result<(), SystemDnsError> {
        let settings = Arc::new(StreamSettings::new(config, &self.metrics)?);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = settings;
        Ok(())
    }

    /// The connector's metrics.
    pub(crate) fn metrics(&self) -> &Arc<ConnectorMetrics> {
        &self.metrics
    }

    /// Close the origin connections, once no stream is left.
    pub(crate) async fn close(&self) {
        self.origin.close(ORIGIN_CLOSE_GRACE).await;
    }
}

/// The policy of the service a stream names, waiting for it up to `limit` (the header
/// timeout; see [`Policies::wait`]). `Err(None)`: the edge abandoned the stream meanwhile.
pub(super) async fn service_policy<S: SendStream>(
    send: &mut S,
    policies: &Policies,
    service: ServiceRef,
    limit: Duration,
) -> Result<Arc<ServiceOrigin>, Option<ProxyErrorReply>> {
    let started = Instant::now();
    let policy = tokio::select! {
        // The policy is almost always there already: look it up first, so the common case
        // does not register interest in the stream's stop as well.
        biased;
        policy = policies.wait(service, limit) => policy,
        _ = send.stopped() => {
            debug!("edge abandoned the stream while it waited for its service policy");
            return Err(None);
        }
    };
    let waited = started.elapsed();
    if waited > Duration::from_millis(1) {
        debug!(
            waited_ms = waited.as_millis() as u64,
            "waited for the service policy"
        );
    }
    policy.map_err(Some)
}

/// Answer with a Proxy-Status error, finish our side, and stop reading the edge's side.
pub(super) async fn refuse<C: Connection>(
    mut incoming: IncomingStream<C>,
    error: ProxyErrorReply,
) -> StreamEnd {
    // A refusal is rare and small: the copy keeps the error for the stream's log line.
    let reply = StreamReply::Error(error.clone());
    match write_frame(&mut incoming.send, &reply).await {
        Err(error) => debug!(%error, "could not send the refusal"),
        Ok(()) => {
            // Already reset by the peer: nothing more to finish.
            let _ = incoming.send.finish();
            incoming.reader.stop(RESET_CANCELLED);
        }
    }
    StreamEnd::refused(error)
}
