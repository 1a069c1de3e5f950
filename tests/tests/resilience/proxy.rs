//! A TCP proxy in front of PostgreSQL that can cut the database off:
//! every open connection through it is dropped without a word and new ones
//! are closed at once, as when the server dies or the network goes (the
//! machine's PostgreSQL itself is shared by other tests and never stopped).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; stops when dropped.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Proxies 127.0.0.1:<free port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let sender = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut down = sender.subscribe();
                if *down.borrow_and_update() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    // Dropping both ends at the cut closes them mid-protocol.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Proxy { addr, cut, task }
    }

    /// Cuts the database off (`true`) or lets it through again.
    pub fn cut(&self, down: bool) {
        self.cut.send_replace(down);
    }

    /// Where `url` (a PostgreSQL URL with `@ip:port/`) points.
    pub fn upstream_of(url: &str) -> SocketAddr {
        let (at, slash) = Self::host_span(url);
        url[at + 1..slash]
            .parse()
            .expect("the test server's address is ip:port")
    }

    /// `url` through the proxy.
    pub fn url_through(&self, url: &str) -> String {
        let (at, slash) = Self::host_span(url);
        format!("{}@{}{}", &url[..at], self.addr, &url[slash..])
    }

    fn host_span(url: &str) -> (usize, usize) {
        let at = url.find('@').expect("a URL with user@host");
        let slash = at + url[at..].find('/').expect("a URL with /database");
        (at, slash)
    }
}
