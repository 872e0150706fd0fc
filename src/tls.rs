//! Which certificate authorities the HTTP clients trust, and what a user is
//! told when an endpoint's certificate is not among them.
//!
//! reqwest trusts the built-in web roots (so public endpoints such as
//! RunPod's work in an image without a CA bundle) and the system's store,
//! read the way OpenSSL tools read it: `SSL_CERT_FILE` (and `SSL_CERT_DIR`)
//! replace the platform store when set. That is how a container is usually
//! told about a private CA (`update-ca-certificates`, or `SSL_CERT_FILE`), so
//! jobpipe needs no flag of its own. The system store is read quietly,
//! though: a `SSL_CERT_FILE` that cannot be read would only show up later as
//! an untrusted certificate, so it is checked here at start-up.

use std::error::Error;

use crate::error::{ConfigError, FatalError};

/// The variable OpenSSL, curl and rustls-native-certs read a CA bundle from.
const CERT_FILE_VAR: &str = "SSL_CERT_FILE";

/// Fails when `SSL_CERT_FILE` is set but names no readable PEM file holding
/// at least one certificate.
pub(crate) fn check_cert_file() -> Result<(), FatalError> {
    let Some(path) = std::env::var_os(CERT_FILE_VAR) else {
        return Ok(());
    };
    let path = std::path::PathBuf::from(path);
    let invalid = |problem: String| {
        FatalError::Config(ConfigError::Invalid(format!(
            "{CERT_FILE_VAR} is {}, which {problem}; set it to a PEM file of the CA certificates to trust, or unset it to use the system's",
            path.display()
        )))
    };
    let pem = std::fs::read(&path).map_err(|e| invalid(format!("cannot be read ({e})")))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(invalid("holds no PEM certificate".into())),
        Err(e) => Err(invalid(format!("is not a PEM certificate bundle ({e})"))),
    }
}

/// What to do about a request that failed because the server's certificate
/// was signed by an authority this worker does not trust, if that was why.
pub(crate) fn untrusted_hint(error: &(dyn Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if is_unknown_issuer(error) {
            return Some(
                "the endpoint's TLS certificate is signed by a CA this worker does not trust; \
                 add that CA to the system's store or set SSL_CERT_FILE to a PEM file holding it",
            );
        }
        cause = error.source();
    }
    None
}

/// Whether `error` is rustls refusing an unknown issuer, looking inside
/// io::Errors, which hide the error they wrap from `source()` (the TLS
/// connector wraps it in two).
fn is_unknown_issuer(mut error: &(dyn Error + 'static)) -> bool {
    while let Some(io) = error.downcast_ref::<std::io::Error>() {
        match io.get_ref() {
            Some(inner) => error = inner,
            None => return false,
        }
    }
    matches!(
        error.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        ))
    )
}
