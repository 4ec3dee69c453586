//! MLLP, the framing HL7 v2 travels in: one connection to the engine, plain TCP (`mllp://`, loopback unless
//! the config allows otherwise) or TLS over it (`mllps://`, trusting the system's CA roots and the destination's
//! optional `hl7v2.ca_file`), and one framed message and its framed answer at a time.
//!
//! A connection that cannot be made, or breaks, is transient (sent again later, same control id). A TLS
//! handshake the engine's certificate fails is a setup problem, named with what to do: it will not mend itself
//! by retrying.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tracing::{debug, info};

use crate::config::MllpAddress;
use crate::deliver::transport::TransportError;

/// MLLP's frame: start block, then end block and carriage return.
const START: u8 = 0x0b;
const END: [u8; 2] = [0x1c, 0x0d];
/// The largest ACK read before the answer is treated as garbage.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// An open connection to the engine: TCP, or TLS over TCP.
pub(super) trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// How to reach one engine.
pub(super) struct Endpoint {
    pub address: MllpAddress,
    /// For `mllps://`.
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Endpoint {
    /// For `mllps://`, reads the trusted CAs now (the system's and `ca_file`), so a missing or unreadable CA
    /// file stops the connector at start with its name, not at the first message.
    pub fn new(address: &MllpAddress, ca_file: Option<&Path>, timeout: Duration) -> Result<Self, TransportError> {
        let tls = address.tls.then(|| tls_connector(ca_file)).transpose().map_err(TransportError::Setup)?;
        Ok(Self { address: address.clone(), tls, timeout })
    }

    /// Connects (and for TLS, completes the handshake, checking the engine's certificate).
    pub async fn connect(&self) -> Result<Box<dyn Connection>, TransportError> {
        let address = &self.address;
        let target = (address.host.as_str(), address.port);
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(TransportError::transient(format!(
                    "cannot connect to the HL7 v2 engine at {address}: {} (is it listening? is a firewall in the way?)",
                    e.kind()
                )));
            }
            Err(_) => {
                return Err(TransportError::transient(format!(
                    "connecting to the HL7 v2 engine at {address} timed out"
                )));
            }
        };
        let Some(tls) = &self.tls else {
            info!(address = %address, "Connected to the HL7 v2 engine.");
            return Ok(Box::new(tcp));
        };
        let name = ServerName::try_from(address.host.clone()).map_err(|_| {
            TransportError::Setup(format!("{address}: \"{}\" is not a host name TLS can check", address.host))
        })?;
        match tokio::time::timeout(self.timeout, tls.connect(name, tcp)).await {
            Ok(Ok(s)) => {
                info!(address = %address, "Connected to the HL7 v2 engine over TLS.");
                Ok(Box::new(s))
            }
            Ok(Err(e)) => Err(handshake_failed(address, e)),
            Err(_) => Err(TransportError::transient(format!("the TLS handshake with {address} timed out"))),
        }
    }
}

/// A failed handshake: a refused certificate (or another TLS rule broken) is a setup problem with what to do;
/// a dropped connection is transient.
fn handshake_failed(address: &MllpAddress, e: std::io::Error) -> TransportError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(why)) => TransportError::Setup(format!(
            "the HL7 v2 engine at {address} presented a certificate this connector does not trust ({why:?}): \
             check the address's host name, or add the CA that issued the engine's certificate to hl7v2.ca_file (PEM)"
        )),
        Some(other) => TransportError::Setup(format!(
            "TLS with the HL7 v2 engine at {address} failed: {other} (ask the engine's administrators which TLS \
             versions and certificate it uses)"
        )),
        None => TransportError::transient(format!("the TLS handshake with {address} failed ({})", e.kind())),
    }
}

/// The TLS client: the system's CA roots and those in `ca_file`.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(added, ignored, errors = native.errors.len(), "Loaded the system's CA certificates.");
    if let Some(path) = ca_file {
        let what = |e: &dyn std::fmt::Display| format!("hl7v2.ca_file {}: {e}", path.display());
        let pem = std::fs::read(path).map_err(|e| what(&e))?;
        let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| what(&e))?;
        if certs.is_empty() {
            return Err(what(&"holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| what(&e))?;
        }
    }
    if roots.is_empty() {
        return Err("mllps://: no CA certificate to trust (the system has none installed and hl7v2.ca_file is not \
                    set): install ca-certificates, or set hl7v2.ca_file"
            .into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Writes one framed message and reads one framed answer.
pub(super) async fn round_trip(stream: &mut dyn Connection, message: &str) -> Result<String, TransportError> {
    let lost = |what: &str, e: std::io::Error| {
        TransportError::transient(format!("the HL7 v2 connection failed while {what} ({})", e.kind()))
    };
    let mut frame = Vec::with_capacity(message.len() + 3);
    frame.push(START);
    frame.extend_from_slice(message.as_bytes());
    frame.extend_from_slice(&END);
    stream.write_all(&frame).await.map_err(|e| lost("sending", e))?;
    stream.flush().await.map_err(|e| lost("sending", e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| lost("waiting for the ACK", e))?;
        if n == 0 {
            return Err(TransportError::transient("the HL7 v2 engine closed the connection before acknowledging"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(2).position(|w| w == END) {
            let start = buf.iter().position(|b| *b == START).map_or(0, |i| i + 1);
            return Ok(String::from_utf8_lossy(&buf[start.min(end)..end]).into_owned());
        }
        if buf.len() > MAX_ACK_BYTES {
            return Err(TransportError::transient("the HL7 v2 engine's answer is not an MLLP frame"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_named() {
        let missing = tls_connector(Some(Path::new("/nonexistent/ca.pem"))).err().unwrap();
        assert!(missing.contains("hl7v2.ca_file /nonexistent/ca.pem"), "{missing}");
        let dir = std::env::temp_dir().join(format!("connector-mllp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = tls_connector(Some(&empty)).err().unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
