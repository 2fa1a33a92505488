//! TLS for a `tcp://` daemon, as buildctl's `--tlscacert`, `--tlscert`, `--tlskey` and
//! `--tlsservername` set it up: the daemon's certificate is checked against a given CA (or the
//! system's roots) for the address's host (or the given server name), and a client
//! certificate is presented when one is given, which buildkitd started with `--tlscacert`
//! demands. Certificates and keys are PEM files.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Where a TLS connection's certificates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// The CA that signed the daemon's certificate; the system's roots when absent.
    pub ca: Option<PathBuf>,
    /// This client's certificate and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry; the address's host when absent.
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the {what} {path}: {source}")]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError { what, path: path.to_path_buf(), source })
}

impl Tls {
    /// The connection's TLS settings for a daemon at `host`.
    pub(crate) fn client_config(&self, host: &str) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new().domain_name(self.server_name.as_deref().unwrap_or(host));
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read("client certificate", cert)?, read("client key", key)?));
        }
        Ok(config)
    }
}
