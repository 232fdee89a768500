//! HTTPS for clients: the rustls server side of the `tls.listen` listener (TLS 1.2 and 1.3,
//! ALPN `h2` and `http/1.1`). The certificate is taken, at each handshake, from the settings in
//! force: a reload (SIGHUP) that read new certificate and key files applies to the handshakes
//! after it, as nginx's reload does, and connections already open keep theirs.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::proxy::Edge;

/// The handshakes of `edge`'s HTTPS listener.
pub fn acceptor(edge: Arc<Edge>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring implements TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(InForce(edge)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// The certificate of the settings in force.
struct InForce(Arc<Edge>);

impl std::fmt::Debug for InForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the tls certificate in force")
    }
}

impl ResolvesServerCert for InForce {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.config().certified.clone()
    }
}
