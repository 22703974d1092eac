//! TLS towards HTTPS origins: one rustls client configuration per verification mode, CA bundle
//! and ALPN offer (built once, then cached), the chain-only verifier behind `verify_ca`, and
//! the mapping of handshake failures to Proxy-Status error types.
//!
//! Trust anchors are the host's system store plus the service's CA bundle when it has one:
//! private origins are usually signed by a company CA that is either installed on the host or
//! given to the service. The system store (rustls-native-certs: files read from disk) is
//! loaded once, on a blocking thread, the first time a configuration needs it. A host with no
//! usable store (a `FROM scratch` container, a minimal VM) gets the web roots compiled into the
//! binary (webpki-roots, Mozilla's set) instead, with one warning: public HTTPS origins still
//! verify there. A CA bundle is parsed once per distinct bundle: the cache is keyed by the
//! bundle's digest, so a 512 KiB bundle costs nothing per request.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::OnceCell;
use tracing::{debug, warn};
use underpass_proto::{ProxyErrorReply, ProxyStatus, TlsVerification};
use underpass_transport::tls::{provider, NoVerifier};

use crate::policy::CaBundle;

/// ALPN offer when HTTP/2 is allowed: h2 first, HTTP/1.1 as the fallback.
const ALPN_H2: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN offer for HTTP/1.1 only (HTTP/2 disabled, or a protocol-upgrade request).
const ALPN_H1: [&[u8]; 1] = [b"http/1.1"];
/// Cached configurations kept at most; the cache starts over when full (it only grows with
/// distinct CA bundles, which are few).
const MAX_CACHED_CONFIGS: usize = 256;

/// How an origin certificate is verified; the hashable twin of [`TlsVerification`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum VerifyMode {
    /// Chain and name.
    Full,
    /// Chain only.
    Ca,
    /// Nothing.
    Disabled,
}

impl From<TlsVerification> for VerifyMode {
    fn from(mode: TlsVerification) -> Self {
        match mode {
            TlsVerification::VerifyFull => VerifyMode::Full,
            TlsVerification::VerifyCa => VerifyMode::Ca,
            TlsVerification::Disabled => VerifyMode::Disabled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConfigKey {
    mode: VerifyMode,
    ca: Option<CaBundle>,
    http2: bool,
}

/// Where the trust anchors besides a service's CA bundle come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootsSource {
    /// The host's system store.
    System,
    /// The web roots compiled into the binary: the system store had no usable certificate.
    Compiled,
}

/// The trust anchors besides a service's CA bundle, decided once per process.
#[derive(Debug)]
struct BaseRoots {
    store: RootCertStore,
    source: RootsSource,
}

impl BaseRoots {
    /// The system store's certificates when at least one of them is a usable trust anchor,
    /// else the compiled-in web roots: an empty store would fail every verified origin, and a
    /// host without one is a packaging accident (a scratch image), not a wish to trust nothing.
    fn choose(system: Vec<CertificateDer<'static>>) -> Self {
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(system);
        if added > 0 {
            return BaseRoots {
                store,
                source: RootsSource::System,
            };
        }
        BaseRoots {
            store: RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            source: RootsSource::Compiled,
        }
    }
}

/// The rustls client configurations in use, built on first use.
#[derive(Default)]
pub(crate) struct TlsConfigs {
    cache: Mutex<HashMap<ConfigKey, Arc<ClientConfig>>>,
    base_roots: OnceCell<Arc<BaseRoots>>,
}

impl TlsConfigs {
    /// The configuration for this mode and CA bundle, offering h2 in ALPN if `http2`.
    pub(crate) async fn config(
        &self,
        mode: VerifyMode,
        ca: Option<&CaBundle>,
        http2: bool,
    ) -> Result<Arc<ClientConfig>, ProxyErrorReply> {
        let key = ConfigKey {
            mode,
            // The CA bundle only matters when something is verified.
            ca: ca.filter(|_| mode != VerifyMode::Disabled).cloned(),
            http2,
        };
        if let Some(config) = self.lock().get(&key) {
            return Ok(config.clone());
        }
        let base_roots = match mode {
            VerifyMode::Disabled => None,
            VerifyMode::Full | VerifyMode::Ca => Some(self.base_roots().await),
        };
        let config = Arc::new(build(&key, base_roots.as_ref().map(|b| &b.store))?);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED_CONFIGS {
            cache.clear();
        }
        cache.insert(key, config.clone());
        Ok(config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConfigKey, Arc<ClientConfig>>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The system's trust store, read from disk once on a blocking thread (never on the
    /// runtime's threads), or the compiled-in web roots when it has no usable certificate.
    async fn base_roots(&self) -> Arc<BaseRoots> {
        self.base_roots
            .get_or_init(|| async {
                let loaded =
                    tokio::task::spawn_blocking(rustls_native_certs::load_native_certs).await;
                let (certs, errors) = match loaded {
                    Ok(loaded) => (
                        loaded.certs,
                        loaded.errors.iter().map(ToString::to_string).collect(),
                    ),
                    Err(error) => (Vec::new(), vec![error.to_string()]),
                };
                let base = BaseRoots::choose(certs);
                match base.source {
                    RootsSource::System => {
                        for error in &errors {
                            warn!(%error, "problem loading a system root certificate");
                        }
                        debug!(roots = base.store.len(), "system root certificates loaded");
                    }
                    RootsSource::Compiled => warn!(
                        roots = base.store.len(),
                        system_store_errors = errors.len(),
                        first_error = errors.first().map(String::as_str).unwrap_or("none"),
                        "no usable certificate in the system trust store: HTTPS origins are \
                         verified against the web roots compiled into the connector (Mozilla's \
                         set) and the services' CA bundles; install the host's CA certificates \
                         or set SSL_CERT_FILE to use its store"
                    ),
                }
                Arc::new(base)
            })
            .await
            .clone()
    }
}

/// `base_roots` is `None` only when nothing is verified.
fn build(
    key: &ConfigKey,
    base_roots: Option<&RootCertStore>,
) -> Result<ClientConfig, ProxyErrorReply> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| internal(format!("TLS versions unavailable: {e}")))?;
    let mut config = match key.mode {
        VerifyMode::Disabled => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider())))
            .with_no_client_auth(),
        VerifyMode::Full | VerifyMode::Ca => {
            let empty = RootCertStore::empty();
            let roots = roots(base_roots.unwrap_or(&empty), key.ca.as_ref())?;
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| ProxyErrorReply {
                    status: ProxyStatus::TlsCertificateError,
                    details: format!(
                        "no trust anchors to verify the origin (system store and CA \
                                 bundle): {e}"
                    ),
                })?;
            if key.mode == VerifyMode::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    let alpn: &[&[u8]] = if key.http2 { &ALPN_H2 } else { &ALPN_H1 };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The base roots plus the certificates of the CA bundle.
fn roots(
    base: &RootCertStore,
    ca: Option<&CaBundle>,
) -> Result<Arc<RootCertStore>, ProxyErrorReply> {
    let mut roots = base.clone();
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_slice_iter(ca.pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_bundle(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad_bundle("it holds no usable CA certificate".into()));
        }
    }
    Ok(Arc::new(roots))
}

fn bad_bundle(detail: String) -> ProxyErrorReply {
    ProxyErrorReply {
        status: ProxyStatus::TlsCertificateError,
        details: format!("the service's CA bundle is unusable: {detail}"),
    }
}

fn internal(details: String) -> ProxyErrorReply {
    ProxyErrorReply {
        status: ProxyStatus::ProxyInternalError,
        details,
    }
}

/// Map a failed TLS handshake to its Proxy-Status error: a rejected certificate is
/// `tls_certificate_error`, anything else (alerts, bad records, the origin hanging up)
/// `tls_protocol_error`.
pub(crate) fn handshake_error(err: io::Error) -> ProxyErrorReply {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => ProxyErrorReply {
            status: ProxyStatus::TlsCertificateError,
            details: format!("origin certificate rejected: {}", certificate_detail(cert)),
        },
        Some(other) => ProxyErrorReply {
            status: ProxyStatus::TlsProtocolError,
            details: format!("TLS handshake with the origin failed: {other}"),
        },
        None => ProxyErrorReply {
            status: ProxyStatus::TlsProtocolError,
            details: format!("TLS handshake with the origin failed: {err}"),
        },
    }
}

/// A short sentence for a certificate error (the variants with context already have one).
fn certificate_detail(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => "unknown issuer (not signed by a trusted CA)".into(),
        CertificateError::NotValidForName => "not valid for the requested name".into(),
        CertificateError::Expired => "expired".into(),
        CertificateError::NotValidYet => "not valid yet".into(),
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadSignature => "bad signature".into(),
        other => other.to_string(),
    }
}

/// Whether `err` is a name mismatch and nothing else.
fn is_name_mismatch(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// `verify_ca`: the full webpki verification, except that a certificate for another name is
/// accepted. webpki checks the chain before the name, so a name-mismatch error means the
/// chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(err) if is_name_mismatch(&err) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn configs_are_cached_per_mode_bundle_and_alpn() {
        let configs = TlsConfigs::default();
        let a = configs
            .config(VerifyMode::Disabled, None, false)
            .await
            .unwrap();
        let b = configs
            .config(VerifyMode::Disabled, None, false)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let h2 = configs
            .config(VerifyMode::Disabled, None, true)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &h2));
        assert_eq!(h2.alpn_protocols[0], b"h2");
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // A CA bundle is irrelevant when nothing is verified.
        let junk = CaBundle::new("junk".into());
        let c = configs
            .config(VerifyMode::Disabled, Some(&junk), false)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a, &c));
    }

    #[tokio::test]
    async fn a_bundle_is_parsed_once_whatever_its_size() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        // About 512 KiB of certificates.
        let bundle = pem.repeat(512 * 1024 / pem.len() + 1);
        assert!(bundle.len() >= 512 * 1024);
        let configs = TlsConfigs::default();
        let first = configs
            .config(VerifyMode::Ca, Some(&CaBundle::new(bundle.clone())), false)
            .await
            .unwrap();
        // The same text arriving again (another policy, another connection) hits the cache.
        let again = configs
            .config(VerifyMode::Ca, Some(&CaBundle::new(bundle)), false)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(configs.lock().len(), 1);
    }

    #[tokio::test]
    async fn an_unusable_bundle_is_a_certificate_error() {
        let configs = TlsConfigs::default();
        let junk = CaBundle::new("no certificates here".into());
        let err = configs
            .config(VerifyMode::Ca, Some(&junk), false)
            .await
            .unwrap_err();
        assert_eq!(err.status, ProxyStatus::TlsCertificateError);
        assert!(err.details.contains("CA bundle"), "{}", err.details);
    }

    fn self_signed_ca() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_system_store_is_used_when_it_has_a_usable_certificate() {
        let base = BaseRoots::choose(vec![self_signed_ca()]);
        assert_eq!(base.source, RootsSource::System);
        assert_eq!(base.store.len(), 1);
        // One unusable entry among usable ones does not discard the store.
        let base = BaseRoots::choose(vec![CertificateDer::from(vec![1, 2, 3]), self_signed_ca()]);
        assert_eq!(base.source, RootsSource::System);
        assert_eq!(base.store.len(), 1);
    }

    #[test]
    fn an_empty_or_unusable_system_store_falls_back_to_the_compiled_roots() {
        for system in [Vec::new(), vec![CertificateDer::from(b"not DER".to_vec())]] {
            let base = BaseRoots::choose(system);
            assert_eq!(base.source, RootsSource::Compiled);
            assert_eq!(base.store.len(), webpki_roots::TLS_SERVER_ROOTS.len());
            assert!(base.store.len() > 100, "the Mozilla set has ~150 roots");
        }
    }

    #[tokio::test]
    async fn the_compiled_roots_verify_and_still_take_a_service_bundle() {
        let fallback = BaseRoots::choose(Vec::new());
        let pem = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.self_signed(&key).unwrap().pem()
        };
        let with_bundle = roots(&fallback.store, Some(&CaBundle::new(pem))).unwrap();
        assert_eq!(with_bundle.len(), fallback.store.len() + 1);
        let key = ConfigKey {
            mode: VerifyMode::Full,
            ca: None,
            http2: false,
        };
        assert!(build(&key, Some(&fallback.store)).is_ok());
    }

    #[test]
    fn handshake_errors_are_classified() {
        let cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let reply = handshake_error(cert);
        assert_eq!(reply.status, ProxyStatus::TlsCertificateError);
        assert!(reply.details.contains("unknown issuer"));
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert_eq!(handshake_error(alert).status, ProxyStatus::TlsProtocolError);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(handshake_error(eof).status, ProxyStatus::TlsProtocolError);
        assert!(is_name_mismatch(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName
        )));
        assert!(!is_name_mismatch(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )));
    }
}
