//! A certificate authority made for one test run, and the TLS server
//! configuration of a stand-in signed by it, so a worker can be pointed at
//! an HTTPS endpoint whose CA only the test knows.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// A self-signed CA and a server certificate it signed for `127.0.0.1`
/// and `localhost`.
pub struct TestCa {
    /// The CA's certificate in PEM, what a user puts in `SSL_CERT_FILE`.
    pub ca_pem: String,
    /// The server side: the certificate chain and its key.
    pub server: Arc<ServerConfig>,
}

impl TestCa {
    /// Makes a fresh CA named `name` and a server certificate.
    pub fn new(name: &str) -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server parameters");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server TLS configuration");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        TestCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem`; returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write the CA certificate");
        path
    }
}
