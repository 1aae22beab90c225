//! A TCP proxy in front of a server, in the test's runtime: it forwards every connection,
//! and can cut them all at once or refuse new ones for a while, without the server knowing
//! anything happened.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A TCP proxy on 127.0.0.1 in front of a server, in the test's runtime: it forwards every
/// connection it accepts, and can cut them all at once, or refuse new ones for a while,
/// without the server knowing anything happened.
pub struct Proxy {
    address: SocketAddr,
    /// Whether it forwards new connections, and the token that ends the current ones;
    /// one lock, so that no connection slips through between a check and a cut.
    state: Arc<Mutex<(bool, CancellationToken)>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 that forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("a bound address");
        let state = Arc::new(Mutex::new((true, CancellationToken::new())));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let cut = {
                    let state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    state.0.then(|| state.1.clone())
                };
                // Down: the connection is closed at once, like a server that is not there.
                let Some(cut) = cut else { continue };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            address,
            state,
            task,
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every connection open now; new ones are forwarded as before.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1.cancel();
        state.1 = CancellationToken::new();
    }

    /// Closes every connection open now, and closes new ones at once until [`Proxy::up`].
    pub fn down(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = false;
        state.1.cancel();
        state.1 = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub fn up(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .cancel();
    }
}
