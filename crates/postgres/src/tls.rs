//! TLS with libpq's `sslmode` semantics, on rustls.
//!
//! One [`rustls::ClientConfig`] per connection configuration serves both the
//! replication connection (through tokio-rustls) and SQL sessions (through
//! tokio-postgres-rustls), so both trust exactly the same certificates:
//!
//! | sslmode | certificate check |
//! |---|---|
//! | `allow`, `prefer` | none |
//! | `require` | none, unless a root certificate is available: then as `verify-ca` |
//! | `verify-ca` | signed by a trusted CA; any host name |
//! | `verify-full` | signed by a trusted CA and valid for the host name |

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::conninfo::{ConnectConfig, SslMode};
use crate::error::{Error, Result};

/// Bundles of the operating system's trusted CAs, for `sslrootcert=system`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Builds the TLS client configuration `config` asks for, or `None` when
/// `sslmode=disable`.
pub fn client_config(config: &ConnectConfig) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if config.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root_path = match config.sslmode {
        SslMode::Allow | SslMode::Prefer => None,
        _ => config.root_cert_path(),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (config.sslmode, root_path) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(tls_error(format!(
                "sslmode={} needs the CA certificates to trust: set sslrootcert=/path/to/ca.pem (or sslrootcert=system), or put them in ~/.postgresql/root.crt",
                config.sslmode
            )));
        }
        (_, None) => Arc::new(CertificateCheck {
            chain: None,
            algorithms: provider.signature_verification_algorithms,
        }),
        (mode, Some(path)) => {
            let roots = load_roots(&path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(CertificateCheck {
                    chain: Some(webpki),
                    algorithms: provider.signature_verification_algorithms,
                })
            }
        }
    };
    let versions: &[&rustls::SupportedProtocolVersion] = if config.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| tls_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let client = match (&config.sslcert, &config.sslkey) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_error(format!("sslkey {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(tls_error(
                "sslcert and sslkey must be given together".to_owned(),
            ));
        }
    };
    let mut client = client;
    client.enable_sni = config.sslsni;
    Ok(Some(Arc::new(client)))
}

/// The TLS server name for `host`: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| tls_error(format!("{host:?} is not a valid host name for TLS")))
}

fn tls_error(reason: String) -> Error {
    Error::Tls { reason }
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let path = if path == Path::new("system") {
        SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| {
                tls_error("sslrootcert=system: no CA bundle found on this machine (install ca-certificates)".to_owned())
            })?
    } else {
        path
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(format!("sslrootcert {}: {e}", path.display())))?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The certificate checks below `verify-full` (which is rustls's own):
/// with a `chain` verifier (`verify-ca`, or `require` with a root
/// certificate) the chain must lead to a trusted CA but the host name is
/// not checked; without one (`prefer`, `require` without a root
/// certificate) any certificate is accepted — encryption without
/// authentication of the server, as libpq does. Handshake signatures are
/// verified either way.
#[derive(Debug)]
struct CertificateCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
