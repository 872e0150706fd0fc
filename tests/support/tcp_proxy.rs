//! A TCP proxy a test can cut: it forwards connections from a local port
//! to a target until [`TcpProxy::cut`], which closes every open connection
//! and every new one at once, as if the machine behind it had lost the
//! network; [`TcpProxy::restore`] lets connections through again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    pub port: u16,
    /// Cancelled on a cut; replaced by a fresh token on restore.
    link: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Starts forwarding 127.0.0.1:`port` (a free one) to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (accept_link, accept_stop) = (link.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                    _ = accept_stop.cancelled() => return,
                };
                let link = accept_link.lock().unwrap().clone();
                if link.is_cancelled() {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, target, link));
            }
        });
        TcpProxy { port, link, stop }
    }

    /// Closes every connection and refuses new ones until [`restore`].
    pub fn cut(&self) {
        self.link.lock().unwrap().cancel();
    }

    pub fn restore(&self) {
        *self.link.lock().unwrap() = CancellationToken::new();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.cancel();
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, link: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = link.cancelled() => {}
    }
}
