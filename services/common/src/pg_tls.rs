//! TLS to PostgreSQL with rustls (the workspace's one TLS stack and crypto
//! provider): the server's certificate must chain to a given CA bundle (for
//! RDS, Amazon's RDS bundle) and name the host dialled. Used when
//! `WEFT_DB_CA` is set; whether TLS is required is the URL's `sslmode`.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// Makes verified TLS connections to PostgreSQL servers.
#[derive(Clone)]
pub struct PgTls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTls")
    }
}

/// Why the CA bundle could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    /// The file could not be read or holds no certificate.
    #[error("reading the CA bundle {path}: {reason}")]
    Bundle {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

impl PgTls {
    /// Trusts the certificates in the PEM file `ca`.
    pub fn from_bundle(ca: &Path) -> Result<Self, PgTlsError> {
        let bad = |reason: String| PgTlsError::Bundle {
            path: ca.display().to_string(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(weft_mesh::provider::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, io::Error> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(PgTlsConnect {
            config: self.0.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
#[derive(Debug)]
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let tls = connector.connect(self.name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection to PostgreSQL.
#[derive(Debug)]
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for PgTlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding needs a certificate digest; plain SCRAM (and
        // the verified server certificate) is what is offered.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// One connection, with TLS when given, its driver running in a task (the
/// pool's connections, migrations and the roles bootstrap all open theirs
/// here).
pub async fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&PgTls>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let log = |result: Result<(), tokio_postgres::Error>| {
        if let Err(e) = result {
            tracing::warn!(error = %e, "database connection ended");
        }
    };
    Ok(match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            (client, tokio::spawn(async move { log(connection.await) }))
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(async move { log(connection.await) }))
        }
    })
}

/// With a CA bundle configured, TLS is required: tokio-postgres's default
/// (`sslmode=prefer`) would fall back to plaintext when the server offers no
/// TLS, which a server impersonator can arrange. `sslmode=disable` next to
/// a CA bundle is a contradiction and refused.
pub fn require_tls(config: &mut tokio_postgres::Config) -> Result<(), String> {
    use tokio_postgres::config::SslMode;
    match config.get_ssl_mode() {
        SslMode::Disable => Err("sslmode=disable while a CA bundle (WEFT_DB_CA) is set".into()),
        _ => {
            config.ssl_mode(SslMode::Require);
            Ok(())
        }
    }
}

#[cfg(test)]
mod require_tests {
    use tokio_postgres::config::SslMode;

    use super::require_tls;

    #[test]
    fn a_ca_bundle_means_tls_is_required() {
        for url in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=prefer",
            "postgres://u@h/db?sslmode=require",
        ] {
            let mut config: tokio_postgres::Config = url.parse().unwrap();
            require_tls(&mut config).unwrap();
            assert_eq!(config.get_ssl_mode(), SslMode::Require, "{url}");
        }
        let mut config: tokio_postgres::Config =
            "postgres://u@h/db?sslmode=disable".parse().unwrap();
        assert!(
            require_tls(&mut config)
                .unwrap_err()
                .contains("sslmode=disable")
        );
    }
}
