//! TLS on the listeners, with rustls: the certificate chain and key from PEM files, TLS 1.2 and
//! 1.3 only, HTTP/2 or HTTP/1.1 chosen by ALPN. The files are read again on SIGHUP and when they
//! change on disk, so a certificate renewed by certbot or cert-manager is served without a restart
//! (a broken pair is refused and the running one stays). With a client CA, a client certificate
//! signed by it is verified (and one signed by anyone else refused); its subject may then stand
//! for a team's key (`[[clients]] cert_subject`). Callers without a certificate still present keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig as ServerSettings;

/// Why the certificate files do not make TLS settings (the setting and file named).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {0}")]
    Settings(#[source] rustls::Error),
    #[error("{setting} {}: {error}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        #[source]
        error: rustls::pki_types::pem::Error,
    },
    #[error(
        "{setting} {}: no certificate in it (a PEM file with -----BEGIN CERTIFICATE-----)",
        path.display()
    )]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("server.tls_client_ca_file {}: {error}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "server.tls_key_file {}: no private key could be read ({error}); give a PEM file with a \
         PKCS#8, PKCS#1 or SEC1 key",
        path.display()
    )]
    NoKey {
        path: PathBuf,
        #[source]
        error: rustls::pki_types::pem::Error,
    },
    #[error(
        "server.tls_cert_file {} and server.tls_key_file {} do not make a pair: {error}",
        cert.display(),
        key.display()
    )]
    NotAPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        error: rustls::Error,
    },
}

/// How often the files are checked for a change.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The files TLS is made of (paths as configured).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The TLS settings being served, replaced whole when the files change.
pub struct Tls {
    files: Files,
    current: ArcSwap<ServerConfig>,
    /// The files' modification times when last read.
    read_at: Mutex<Vec<Option<SystemTime>>>,
}

impl Tls {
    /// TLS as `[server]` configures it; None when no certificate is set.
    pub fn from_settings(server: &ServerSettings) -> Result<Option<Arc<Self>>, TlsError> {
        if server.tls_cert_file.is_empty() {
            return Ok(None);
        }
        let files = Files {
            cert: PathBuf::from(&server.tls_cert_file),
            key: PathBuf::from(&server.tls_key_file),
            client_ca: (!server.tls_client_ca_file.is_empty())
                .then(|| PathBuf::from(&server.tls_client_ca_file)),
        };
        let read_at = files.modified();
        let config = files.load()?;
        Ok(Some(Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(config),
            read_at: Mutex::new(read_at),
        })))
    }

    /// What a new connection is accepted with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reads the files again; a pair that does not load is refused and the running one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let read_at = self.files.modified();
        let config = self.files.load()?;
        self.current.store(Arc::new(config));
        *self.read_at.lock().expect("tls lock") = read_at;
        Ok(())
    }

    /// Reloads when a file's modification time moved since it was last read.
    fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = self.files.modified();
        let changed = *self.read_at.lock().expect("tls lock") != now;
        changed.then(|| {
            let result = self.reload();
            if result.is_err() {
                // Not again until the files change once more.
                *self.read_at.lock().expect("tls lock") = now;
            }
            result
        })
    }

    /// Checks the files every two seconds for as long as the server runs.
    pub async fn watch(self: Arc<Self>) {
        let mut every = tokio::time::interval(WATCH_EVERY);
        loop {
            every.tick().await;
            match self.reload_if_changed() {
                Some(Ok(())) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "TLS certificate files changed: reloaded"
                ),
                Some(Err(reason)) => tracing::error!(
                    %reason,
                    "TLS certificate files changed but do not load; the running certificate stays"
                ),
                None => {}
            }
        }
    }
}

impl Files {
    fn modified(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn load(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Settings)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let refused =
                    |error: Box<dyn std::error::Error + Send + Sync>| TlsError::ClientCa {
                        path: ca.clone(),
                        error,
                    };
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates(ca, "server.tls_client_ca_file")? {
                    roots.add(cert).map_err(|e| refused(e.into()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        // Teams without a certificate present their key as before.
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| refused(e.into()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = certificates(&self.cert, "server.tls_cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|error| TlsError::NoKey {
            path: self.key.clone(),
            error,
        })?;
        let mut config =
            builder
                .with_single_cert(chain, key)
                .map_err(|error| TlsError::NotAPair {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    error,
                })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    path: &Path,
    setting: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |error| TlsError::Unreadable {
        setting,
        path: path.to_path_buf(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The subject of the verified client certificate of a connection, as `CN=team-a, O=Example`.
pub fn client_subject(connection: &rustls::ServerConnection) -> Option<Arc<str>> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(Arc::from(parsed.subject().to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_subject_is_the_same_in_any_order_and_spacing() {
        use crate::config::subject_key;
        assert_eq!(
            subject_key("CN=team-a, O=Example"),
            subject_key("o=Example,CN=team-a")
        );
        assert_ne!(subject_key("CN=team-a"), subject_key("CN=team-b"));
    }
}
