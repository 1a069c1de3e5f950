//! The accept loop through real sockets: caps, TLS modes, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailroom_net::tls::{self, TlsAcceptor};
use mailroom_net::{
    CancellationToken, Connection, ConnectionLimiter, Listener, MailStream, Refusal, ServeContext,
    Session, Shutdown, TlsMode, serve,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A line protocol just big enough to observe the plumbing: greets with the
/// TLS state, echoes lines, upgrades on `tls`, says `bye` on shutdown.
struct Echo;

impl Session for Echo {
    async fn serve(&self, conn: Connection, shutdown: CancellationToken) {
        let mut stream = conn.stream;
        loop {
            let hello = format!("hello tls={}\r\n", stream.is_tls());
            if stream.write_all(hello.as_bytes()).await.is_err() {
                return;
            }
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let upgrade = loop {
                line.clear();
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = reader.get_mut().write_all(b"bye\r\n").await;
                        return;
                    }
                    n = reader.read_line(&mut line) => {
                        if n.unwrap_or(0) == 0 { return; }
                    }
                }
                match line.trim_end() {
                    "tls" => break true,
                    "quit" => return,
                    other => {
                        let reply = format!("echo {other}\r\n");
                        if reader.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            };
            // Whatever the client pipelined after "tls" is dropped with the reader.
            stream = reader.into_inner();
            if upgrade {
                let acceptor = conn.tls.as_ref().unwrap();
                stream = match stream.start_tls(acceptor, conn.handshake_timeout).await {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        }
    }

    async fn refuse(&self, mut stream: MailStream, why: Refusal) {
        let _ = stream
            .write_all(format!("refused {why:?}\r\n").as_bytes())
            .await;
    }
}

struct Harness {
    addr: SocketAddr,
    shutdown: Shutdown,
    cert: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn start(mode: TlsMode, max_total: usize, max_per_ip: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls::ensure_self_signed(dir.path(), "mail.example.test").unwrap();
    let acceptor: TlsAcceptor = tls::acceptor(&cert, &key).unwrap();
    let listener = Listener::bind("echo", "127.0.0.1:0".parse().unwrap(), mode)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let shutdown = Shutdown::new();
    let ctx = ServeContext {
        limiter: ConnectionLimiter::new(max_total, max_per_ip),
        tls: Some(acceptor),
        handshake_timeout: Duration::from_secs(5),
        shutdown: shutdown.clone(),
    };
    shutdown.spawn(async move { serve(listener, Arc::new(Echo), ctx).await.unwrap() });
    Harness {
        addr,
        shutdown,
        cert: std::fs::read(cert).unwrap(),
        _dir: dir,
    }
}

async fn line<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut l))
        .await
        .unwrap()
        .unwrap();
    l.trim_end().to_string()
}

async fn connect_from(local_ip: &str, addr: SocketAddr) -> BufReader<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{local_ip}:0").parse().unwrap())
        .unwrap();
    BufReader::new(socket.connect(addr).await.unwrap())
}

fn client_tls(cert_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(r: &mut BufReader<S>, say: &str) -> String {
    r.get_mut()
        .write_all(format!("{say}\r\n").as_bytes())
        .await
        .unwrap();
    line(r).await
}

#[tokio::test]
async fn per_ip_cap_refuses_with_the_protocols_words_and_frees_on_close() {
    let h = start(TlsMode::StartTls, 10, 1).await;
    let mut first = connect_from("127.0.0.1", h.addr).await;
    assert_eq!(line(&mut first).await, "hello tls=false");
    let mut second = connect_from("127.0.0.1", h.addr).await;
    assert_eq!(line(&mut second).await, "refused TooManyFromAddress");
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", h.addr).await;
    assert_eq!(line(&mut other).await, "hello tls=false");
    // Closing the first frees its slot.
    assert_eq!(exchange(&mut first, "quit").await, "");
    let mut third = None;
    for _ in 0..50 {
        let mut c = connect_from("127.0.0.1", h.addr).await;
        let l = line(&mut c).await;
        if l == "hello tls=false" {
            third = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(third.is_some(), "the slot was never given back");
}

#[tokio::test]
async fn global_cap_applies_across_addresses() {
    let h = start(TlsMode::StartTls, 1, 1).await;
    let mut a = connect_from("127.0.0.1", h.addr).await;
    assert_eq!(line(&mut a).await, "hello tls=false");
    let mut b = connect_from("127.0.0.3", h.addr).await;
    assert_eq!(line(&mut b).await, "refused TooManyConnections");
}

#[tokio::test]
async fn implicit_tls_speaks_tls_from_the_first_byte() {
    let h = start(TlsMode::Implicit, 10, 10).await;
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("mail.example.test").unwrap();
    let tls = client_tls(&h.cert).connect(name, tcp).await.unwrap();
    let mut r = BufReader::new(tls);
    assert_eq!(line(&mut r).await, "hello tls=true");
    assert_eq!(exchange(&mut r, "ping").await, "echo ping");
}

#[tokio::test]
async fn starttls_upgrades_and_drops_what_was_pipelined_before_it() {
    let h = start(TlsMode::StartTls, 10, 10).await;
    let mut r = connect_from("127.0.0.1", h.addr).await;
    assert_eq!(line(&mut r).await, "hello tls=false");
    // "injected" rides in the same packet as "tls": it must not be executed after the handshake.
    r.get_mut().write_all(b"tls\r\ninjected\r\n").await.unwrap();
    let tcp = r.into_inner();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    // Either the server had read "injected" into its cleartext buffer and
    // dropped it (the handshake succeeds), or it was still in the socket and
    // broke the handshake. It must never be executed as a command.
    if let Ok(tls) = client_tls(&h.cert).connect(name, tcp).await {
        let mut r = BufReader::new(tls);
        assert_eq!(line(&mut r).await, "hello tls=true");
        assert_eq!(exchange(&mut r, "after").await, "echo after");
    }
}

#[tokio::test]
async fn shutdown_stops_accepting_and_sessions_say_goodbye() {
    let h = start(TlsMode::StartTls, 10, 10).await;
    let mut c = connect_from("127.0.0.1", h.addr).await;
    assert_eq!(line(&mut c).await, "hello tls=false");
    let drained = h.shutdown.drain(Duration::from_secs(5)).await;
    assert!(drained, "sessions did not end within the grace period");
    assert_eq!(line(&mut c).await, "bye");
    // The listener is closed: a new connection is refused or closed at once.
    match TcpStream::connect(h.addr).await {
        Err(_) => {}
        Ok(s) => {
            let mut r = BufReader::new(s);
            assert_eq!(
                line(&mut r).await,
                "",
                "a connection was served after shutdown"
            );
        }
    }
}

#[test]
fn bad_certificate_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = tls::server_config(&missing, &missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem").unwrap();
    let err = tls::server_config(&junk, &junk).unwrap_err().to_string();
    assert!(
        err.contains("junk.pem") && err.contains("CERTIFICATE"),
        "{err}"
    );
    // A valid certificate with the wrong key is refused by rustls.
    let (cert, _key) = tls::ensure_self_signed(&dir.path().join("a"), "a.test").unwrap();
    let (_cert, other_key) = tls::ensure_self_signed(&dir.path().join("b"), "b.test").unwrap();
    assert!(tls::server_config(&cert, &other_key).is_err());
}

#[tokio::test]
async fn binding_a_taken_port_names_the_service() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Listener::bind("submission", taken.local_addr().unwrap(), TlsMode::StartTls)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("submission") && err.contains("another program"),
        "{err}"
    );
}
