//! The SMTP side of the mailer pool: one actix actor per persistent connection. Each actor owns
//! one lettre `AsyncSmtpConnection` over a TCP stream we open ourselves with TCP_NODELAY (lettre
//! does not set it, and Nagle plus delayed ACKs hold one connection to ~22 messages/s), reuses
//! it message after message, and reconnects after any error. Delivering one message at a time
//! per actor keeps SMTP's strict request/response order on each connection.

use crate::config::{MailSettings, SmtpSettings};
use actix::prelude::*;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What became of one message handed to a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server took responsibility for it (250 after DATA).
    Accepted,
    /// A 4xx for this message: try again later.
    Deferred(String),
    /// A 5xx: never deliverable as it is.
    Rejected(String),
    /// No answer about the message at all (connection refused, reset, timed out, TLS or auth
    /// failed): it stays in the outbox untouched and the pool backs off.
    Unavailable(String),
}

#[derive(Clone)]
struct Endpoint {
    host: String,
    port: u16,
    tls: String,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    /// Extra trusted roots (DER), from `mail.smtp.ca_file`.
    roots: Vec<Vec<u8>>,
}

/// Connection actors for one SMTP server, used round-robin.
pub struct SmtpPool {
    conns: Vec<Addr<SmtpConnection>>,
    next: AtomicUsize,
}

impl SmtpPool {
    /// Starts the connection actors on the current arbiter (they connect on first use).
    pub fn start(mail: &MailSettings, open: prometheus::IntGauge) -> Result<SmtpPool, String> {
        let s: &SmtpSettings = &mail.smtp;
        let hello = if s.hello_name.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(s.hello_name.clone())
        };
        let endpoint = Arc::new(Endpoint {
            host: s.host.clone(),
            port: s.port,
            tls: s.tls.clone(),
            credentials: (!s.username.is_empty()).then(|| Credentials::new(s.username.clone(), s.password.clone())),
            timeout: mail.timing().map(|t| t.smtp_timeout).unwrap_or(Duration::from_secs(30)),
            hello,
            roots: extra_roots(&s.ca_file)?,
        });
        let conns = (0..s.connections.max(1))
            .map(|_| {
                SmtpConnection {
                    endpoint: endpoint.clone(),
                    conn: None,
                    open: open.clone(),
                }
                .start()
            })
            .collect();
        Ok(SmtpPool {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether the actors still run (they stop with the actix system that started them).
    pub fn alive(&self) -> bool {
        self.conns.iter().all(|c| c.connected())
    }

    /// Queues the message on the next connection now; the future waits for its answer.
    pub fn deliver(&self, envelope: Envelope, message: Arc<[u8]>) -> impl Future<Output = Outcome> + use<> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let request = self.conns[i].send(Deliver { envelope, message });
        async move {
            match request.await {
                Ok(outcome) => outcome,
                Err(e) => Outcome::Unavailable(format!("mailer connection actor: {e}")),
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "Outcome")]
struct Deliver {
    envelope: Envelope,
    message: Arc<[u8]>,
}

struct SmtpConnection {
    endpoint: Arc<Endpoint>,
    conn: Option<AsyncSmtpConnection>,
    open: prometheus::IntGauge,
}

impl Actor for SmtpConnection {
    type Context = Context<Self>;
}

impl Handler<Deliver> for SmtpConnection {
    // Atomic: the next message waits until this one's SMTP exchange is over.
    type Result = AtomicResponse<Self, Outcome>;

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) -> Self::Result {
        let conn = match self.conn.take() {
            Some(c) if c.has_broken() => {
                self.open.dec();
                None
            }
            other => other,
        };
        let endpoint = self.endpoint.clone();
        let open = self.open.clone();
        let fut = async move {
            let mut conn = match conn {
                Some(c) => c,
                None => match connect(&endpoint).await {
                    Ok(c) => {
                        open.inc();
                        c
                    }
                    Err(e) => return (None, Outcome::Unavailable(e)),
                },
            };
            let sent = tokio::time::timeout(endpoint.timeout, conn.send(&msg.envelope, &msg.message)).await;
            match sent {
                Ok(Ok(_)) => (Some(conn), Outcome::Accepted),
                Ok(Err(e)) => {
                    let outcome = classify(&e);
                    // After a refusal the transaction state is unknown to us: start clean.
                    conn.abort().await;
                    open.dec();
                    (None, outcome)
                }
                Err(_) => {
                    open.dec();
                    (None, Outcome::Unavailable("SMTP exchange timed out".into()))
                }
            }
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|(conn, outcome), act, _| {
            act.conn = conn;
            outcome
        })))
    }
}

impl Drop for SmtpConnection {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.open.dec();
        }
    }
}

/// A refusal names its code; anything else (I/O, timeout, protocol) says nothing about the
/// message itself.
fn classify(e: &lettre::transport::smtp::Error) -> Outcome {
    match e.status() {
        Some(code) if e.is_permanent() => Outcome::Rejected(format!("{code} {e}")),
        Some(code) if e.is_transient() => Outcome::Deferred(format!("{code} {e}")),
        _ => Outcome::Unavailable(e.to_string()),
    }
}

async fn connect(ep: &Endpoint) -> Result<AsyncSmtpConnection, String> {
    let addr = (ep.host.as_str(), ep.port);
    let tcp = tokio::time::timeout(ep.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", ep.host, ep.port))?
        .map_err(|e| format!("cannot connect to {}:{}: {e}", ep.host, ep.port))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let stream: Box<dyn AsyncTokioStream> = if ep.tls == "tls" {
        Box::new(ImplicitTls(tls_connect(ep, tcp).await?))
    } else {
        Box::new(tcp)
    };
    let handshake = async {
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &ep.hello)
            .await
            .map_err(|e| format!("SMTP greeting from {}:{}: {e}", ep.host, ep.port))?;
        if ep.tls == "starttls" {
            let mut params = TlsParameters::builder(ep.host.clone());
            for der in &ep.roots {
                params = params.add_root_certificate(Certificate::from_der(der.clone()).map_err(|e| e.to_string())?);
            }
            let params = params.build_rustls().map_err(|e| e.to_string())?;
            conn.starttls(params, &ep.hello)
                .await
                .map_err(|e| format!("STARTTLS with {}: {e}", ep.host))?;
        }
        if let Some(c) = &ep.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c)
                .await
                .map_err(|e| format!("SMTP AUTH at {}: {e}", ep.host))?;
        }
        Ok::<_, String>(conn)
    };
    tokio::time::timeout(ep.timeout, handshake)
        .await
        .map_err(|_| format!("SMTP handshake with {}:{} timed out", ep.host, ep.port))?
}

/// The certificates of a PEM file, as DER (empty path: none).
pub(crate) fn extra_roots(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if path.as_os_str().is_empty() {
        return Ok(vec![]);
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("mail.smtp.ca_file {}: {e}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("mail.smtp.ca_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("mail.smtp.ca_file {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

async fn tls_connect(ep: &Endpoint, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let host = ep.host.as_str();
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in &ep.roots {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| format!("mail.smtp.ca_file: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))
}

/// Implicit TLS (port 465) over our own no-delay socket, in the shape lettre takes.
#[derive(Debug)]
struct ImplicitTls(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
