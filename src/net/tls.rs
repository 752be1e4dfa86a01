//! TLS setup, one way for every client: certificates are verified against a CA file or the
//! system's trust store, a client certificate is optional, and turning verification off takes
//! an explicit setting and is logged as a warning naming the client. Servers (the firewall
//! lists' endpoint) load their certificate from mounted PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// TLS client settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM file of the CA certificates to trust; default: the system's trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that authenticate clients (with
    /// `key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name to verify the server's certificate against (and send as SNI); default: the
    /// host connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate. Only for tests against a server with a throwaway certificate:
    /// anyone on the path can read and change the traffic. Logged as a warning.
    pub insecure_skip_verify: bool,
}

impl TlsSettings {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(
                path,
                "a client certificate needs both cert_file and key_file",
            );
        }
        if self.server_name.as_deref() == Some("") {
            problems.push(format!("{path}.server_name"), "must not be empty");
        }
    }
}

/// Which certificates a client trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// `ca_file` when set, else the system's trust store.
    CaFileOrSystem,
    /// The system's trust store, plus `ca_file` when set (feeds under an internal PKI beside
    /// public ones).
    SystemAndCaFile,
}

/// TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("the system trust store has no usable CA certificate; set tls.ca_file")]
    NoRoots,
    #[error("`{0}` is not a valid TLS server name; set tls.server_name")]
    ServerName(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "tls_read",
            TlsError::NoCertificate { .. } => "tls_no_certificate",
            TlsError::NoRoots => "tls_no_roots",
            TlsError::ServerName(_) => "tls_server_name",
            TlsError::Rustls(_) => "tls",
        }
    }
}

/// Installs the process-wide crypto provider (ring) that kube and reqwest use; harmless when
/// already installed.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The rustls client configuration for `settings`; `client` names the client in the warning
/// logged when verification is off.
pub fn client_config(
    settings: &TlsSettings,
    trust: Trust,
    client: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if settings.insecure_skip_verify {
        tracing::warn!(client, "TLS certificate verification is off (tls.insecure_skip_verify): anyone on the path can read and change the traffic");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if trust == Trust::SystemAndCaFile || settings.ca_file.is_none() {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        if let Some(path) = &settings.ca_file {
            for certificate in certificates("CA file", path)? {
                roots.add(certificate)?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        builder.with_root_certificates(roots)
    };
    Ok(match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("client certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
                what: "client key",
                path: key.display().to_string(),
                source,
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// A server's TLS configuration from a PEM certificate chain and key (a mounted Secret).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = certificates("server certificate", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        what: "server key",
        path: key.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

/// The name to verify a server's certificate against: `settings.server_name`, else `host`.
pub fn server_name(
    settings: &TlsSettings,
    host: &str,
) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    let name = settings
        .server_name
        .clone()
        .unwrap_or_else(|| host.to_owned());
    rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certificates)
}

/// The verifier behind `insecure_skip_verify`: any certificate, any name; signatures are still
/// checked so the handshake is well-formed.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
