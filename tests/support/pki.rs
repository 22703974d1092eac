//! A throw-away certificate authority for TLS tests (rcgen), and rustls configs that trust it.
//!
//! Every [`TestPki`] is an independent CA: make two to test "unknown CA" failures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A test certificate authority that issues server certificates for DNS names and IPs.
pub struct TestPki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A certificate issued by a [`TestPki`].
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf certificate followed by the CA certificate, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl TestPki {
    /// Creates a new CA (ECDSA P-256) whose common name is `name`.
    ///
    /// # Panics
    /// When rcgen fails (it does not for these fixed parameters).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Underpass tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("rcgen generates a P-256 key");
        let ca_cert = params
            .self_signed(&ca_key)
            .expect("rcgen self-signs a CA certificate");
        TestPki { ca_cert, ca_key }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// Issues a server certificate for `names`: each is an IP SAN when it parses as an IP
    /// address, else a DNS SAN (wildcards like `*.example.test` allowed). The first name is
    /// also the common name.
    ///
    /// # Panics
    /// When a name is not a valid DNS name or IP address.
    pub fn issue(&self, names: &[&str]) -> IssuedCert {
        self.try_issue(names)
            .unwrap_or_else(|e| panic!("cannot issue a certificate for {names:?}: {e:#}"))
    }

    fn try_issue(&self, names: &[&str]) -> anyhow::Result<IssuedCert> {
        let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(sans).context("subject alternative names")?;
        let mut dn = DistinguishedName::new();
        if let Some(first) = names.first() {
            dn.push(DnType::CommonName, *first);
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generate key")?;
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .context("sign")?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", cert.pem(), self.ca_cert.pem()),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// Issues a certificate for `names` and writes `<dir>/<stem>.crt` (chain) and
    /// `<dir>/<stem>.key`; returns their paths.
    pub fn issue_to_files(&self, names: &[&str], dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let issued = self.issue(names);
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write(&cert, issued.chain_pem.as_bytes());
        write(&key, issued.key_pem.as_bytes());
        (cert, key)
    }

    /// Writes the CA certificate to `<dir>/<stem>.crt` and returns the path.
    pub fn write_ca(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.crt"));
        write(&path, self.ca_pem().as_bytes());
        path
    }

    /// A rustls client config (ring provider) that trusts only this CA and checks names.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der())
            .expect("rustls accepts an rcgen CA certificate");
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A rustls server config (ring provider) presenting a certificate for `names`, for
    /// in-process TLS origins.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let issued = self.issue(names);
        let chain = vec![CertificateDer::from(issued.cert_der.clone()), self.ca_der()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("rustls accepts an rcgen certificate and key");
        Arc::new(config)
    }
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// The one crypto provider of the workspace.
/// A PEM bundle of at least `min_len` bytes: unrelated CA certificates (each its own subject,
/// all sharing one key, which is enough for a trust store) with `ca_pem` last, so a reader
/// that stops early misses the one that matters. For "a large `ca_file` works" tests.
///
/// # Panics
/// When rcgen fails (it does not for these fixed parameters).
pub fn padded_ca_bundle(ca_pem: &str, min_len: usize) -> String {
    let key = KeyPair::generate().expect("rcgen generates a P-256 key");
    let mut bundle = String::with_capacity(min_len + ca_pem.len() + 1024);
    let mut index = 0u32;
    while bundle.len() + ca_pem.len() < min_len {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Underpass filler CA {index}"));
        dn.push(DnType::OrganizationName, "Underpass tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from(u64::from(index) + 1));
        let cert = params
            .self_signed(&key)
            .expect("rcgen self-signs a CA certificate");
        bundle.push_str(&cert.pem());
        index += 1;
    }
    bundle.push_str(ca_pem);
    bundle
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
