//! TLS configuration for the QUIC transport: one crypto provider (ring), TLS 1.3 only, and the
//! ways a connector verifies the edge (CA bundle, system roots, CA pin, or — dangerously — not
//! at all). Also a development PKI (a fresh CA and a leaf) generated with rcgen.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input could not be parsed.
    #[error("invalid PEM in {what}: {detail}")]
    Pem {
        /// Which input was bad ("CA bundle", "certificate chain", "private key").
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// A PEM input held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// None of the CA certificates given could be used as a trust anchor.
    #[error("no usable CA certificate in the CA bundle: {0}")]
    InvalidCa(String),
    /// The system trust store could not be loaded or was empty.
    #[error("system root certificates unavailable: {0}")]
    SystemRoots(String),
    /// rustls refused the configuration (bad key, mismatched key and certificate, ...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls configuration cannot carry QUIC (it lacks TLS 1.3 or its initial suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    NotQuicCompatible(String),
    /// Generating the development PKI needs at least one name.
    #[error("no DNS name or IP address given for the certificate")]
    NoNames,
    /// rcgen failed to generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// How the connector verifies the edge's certificate.
#[derive(Clone)]
pub enum EdgeVerification {
    /// Trust the CA certificates in this PEM bundle.
    CaPem(Vec<u8>),
    /// Trust the operating system's root certificates (rustls-native-certs).
    SystemRoots,
    /// SHA-256 of the DER of a CA certificate that must appear in the chain the edge presents
    /// and must have signed the leaf; the leaf's name is checked as usual.
    Pin([u8; 32]),
    /// Accept any certificate. Only for experiments; the caller must log this loudly.
    DangerousNoVerify,
}

impl fmt::Debug for EdgeVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
            Self::SystemRoots => f.write_str("SystemRoots"),
            Self::Pin(pin) => write!(f, "Pin(sha256:{})", hex(pin)),
            Self::DangerousNoVerify => f.write_str("DangerousNoVerify"),
        }
    }
}

/// The one crypto provider used everywhere (ring). Passed explicitly to every rustls builder,
/// so no process-wide default needs installing.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A TLS 1.3 client configuration that verifies the edge as `verification` says and offers
/// the given ALPN protocols.
pub fn client_config(
    verification: &EdgeVerification,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match verification {
        EdgeVerification::CaPem(pem) => {
            let certs = parse_certs(pem, "CA bundle")?;
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::InvalidCa(format!(
                    "{ignored} certificate(s) could not be parsed as trust anchors"
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        EdgeVerification::SystemRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!(%error, "problem loading a system root certificate");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(TlsError::SystemRoots(
                    "no usable certificate in the system trust store".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        EdgeVerification::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier::new(*pin)))
            .with_no_client_auth(),
        EdgeVerification::DangerousNoVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3 server configuration presenting `cert_chain_pem` (leaf first, then the CA so a
/// pinning client can find it) with `key_pem`, offering the given ALPN protocols.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = parse_certs(cert_chain_pem, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "private key",
        detail: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// SHA-256 of a certificate's DER encoding: the pin format carried in tunnel tokens.
pub fn cert_pin(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The pin ([`cert_pin`]) of the first certificate in a PEM bundle.
pub fn pem_first_cert_pin(pem: &[u8]) -> Result<[u8; 32], TlsError> {
    let certs = parse_certs(pem, "certificate PEM")?;
    // parse_certs never returns an empty list.
    let first = certs
        .first()
        .ok_or(TlsError::NoCertificate("certificate PEM"))?;
    Ok(cert_pin(first.as_ref()))
}

/// A development PKI: a fresh CA and one leaf certificate signed by it.
#[derive(Clone)]
pub struct DevPki {
    /// The CA certificate (PEM).
    pub ca_cert_pem: String,
    /// The CA's private key (PKCS#8 PEM). Keep it secret (0600).
    pub ca_key_pem: String,
    /// The chain the edge presents: the leaf, then the CA (PEM).
    pub chain_pem: String,
    /// The leaf's private key (PKCS#8 PEM). Keep it secret (0600).
    pub key_pem: String,
    /// [`cert_pin`] of the CA certificate, for [`EdgeVerification::Pin`].
    pub ca_pin: [u8; 32],
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("ca_pin", &hex(&self.ca_pin))
            .finish_non_exhaustive()
    }
}

impl DevPki {
    /// A fresh CA and a leaf for `names` (DNS names and IP literals as SANs).
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        if names.is_empty() {
            return Err(TlsError::NoNames);
        }
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.distinguished_name = DistinguishedName::new();
        // A name unique to this CA, so that a client trusting another edge's CA cannot mistake
        // it for this one's issuer and reports an unknown issuer rather than a bad signature.
        let key_id = cert_pin(&ca_key.public_key_der());
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("Underpass edge CA {}", hex(&key_id[..8])),
        );
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        // CertificateParams::new turns IP literals into IP SANs and the rest into DNS SANs.
        let mut leaf_params = CertificateParams::new(names.to_vec())?;
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.distinguished_name = DistinguishedName::new();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_cert = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

        let ca_cert_pem = ca_cert.pem();
        Ok(Self {
            ca_pin: cert_pin(ca_cert.der()),
            chain_pem: format!("{}{}", leaf_cert.pem(), ca_cert_pem),
            ca_cert_pem,
            ca_key_pem: ca_key.serialize_pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }
}

/// Verifies the edge against a pinned CA certificate found in the chain it presents.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// The edge's chain did not contain the pinned CA certificate.
#[derive(thiserror::Error)]
#[error("edge certificate chain does not contain the pinned CA (sha256:{pin})")]
struct PinNotFound {
    pin: String,
}

// rustls shows certificate errors with `Debug`: make that the readable sentence.
impl fmt::Debug for PinNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PinVerifier {
    fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(anchor) = intermediates
            .iter()
            .chain(std::iter::once(end_entity))
            .find(|cert| cert_pin(cert.as_ref()) == self.pin)
        else {
            tracing::warn!(pin = %hex(&self.pin), "edge chain lacks the pinned CA certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinNotFound {
                    pin: hex(&self.pin),
                })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that trusts exactly one server certificate: the first one of
/// `cert_chain_pem` (the file the server presents). For a client on the server's own host that
/// reads the server's certificate file (`underpass-edge tunnel info` on a TLS admin listener):
/// the name is not checked, the certificate is, byte for byte, and so is the handshake's
/// signature by its key.
pub fn exact_leaf_client_config(
    cert_chain_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let leaf = parse_certs(cert_chain_pem, "certificate chain")?
        .swap_remove(0)
        .into_owned();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LeafVerifier {
            leaf,
            provider: provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Accepts one certificate, compared byte for byte, and the handshakes its key signed.
#[derive(Debug)]
struct LeafVerifier {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts any certificate; still checks that the handshake was signed by its key, so the
/// peer at least holds the key of the certificate it sent. For the explicitly dangerous
/// settings only (edge `DangerousNoVerify`, origin `cert_verification_mode = "disabled"`).
#[derive(Debug)]
pub struct NoVerifier(pub Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// All certificates in a PEM input; an error if there are none.
fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// Lower-case hex, for pins in logs and `Debug` output.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_pin_matches_ca_pem() {
        let pki = DevPki::generate(&["edge.test".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(
            pem_first_cert_pin(pki.ca_cert_pem.as_bytes()).unwrap(),
            pki.ca_pin
        );
        // The chain is leaf first, then the CA.
        let chain = parse_certs(pki.chain_pem.as_bytes(), "chain").unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(cert_pin(chain[1].as_ref()), pki.ca_pin);
        assert_ne!(cert_pin(chain[0].as_ref()), pki.ca_pin);
        server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[b"x"]).unwrap();
    }

    #[test]
    fn debug_prints_pin_as_hex_and_hides_pem() {
        let v = EdgeVerification::Pin([0xab; 32]);
        assert_eq!(format!("{v:?}"), format!("Pin(sha256:{})", "ab".repeat(32)));
        let v = EdgeVerification::CaPem(b"-----BEGIN CERTIFICATE-----".to_vec());
        assert_eq!(format!("{v:?}"), "CaPem(27 bytes)");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(DevPki::generate(&[]), Err(TlsError::NoNames)));
        assert!(matches!(
            pem_first_cert_pin(b"nothing here"),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(client_config(&EdgeVerification::CaPem(b"junk".to_vec()), &[]).is_err());
        let pki = DevPki::generate(&["a.test".into()]).unwrap();
        assert!(server_config(pki.chain_pem.as_bytes(), b"no key", &[]).is_err());
        let other = DevPki::generate(&["a.test".into()]).unwrap();
        // A key that does not match the leaf is refused.
        assert!(server_config(pki.chain_pem.as_bytes(), other.key_pem.as_bytes(), &[]).is_err());
    }
}
