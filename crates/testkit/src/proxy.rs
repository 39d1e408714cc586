//! A TCP proxy between clients and a server, for fault tests: put it in
//! front of a [`Cluster`](crate::Cluster) and it can cut every connection
//! through it (as a network failure or a firewall would) or stall them
//! (bytes stop flowing, connections stay open).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;

/// What the proxy's threads share.
#[derive(Default)]
struct Shared {
    stalled: AtomicBool,
    closing: AtomicBool,
    /// Both ends of every open connection, by connection, to cut them.
    sockets: Mutex<HashMap<u64, [TcpStream; 2]>>,
}

/// A TCP proxy on `127.0.0.1` forwarding to one upstream address. Dropping
/// it closes its port and every connection through it.
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts forwarding a free port on 127.0.0.1 to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<TcpProxy, Error> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("listen on", "127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("read the address of", "the proxy", e))?
            .port();
        let shared = Arc::new(Shared::default());
        let accepting = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept(&listener, upstream, &shared))
        };
        Ok(TcpProxy {
            port,
            shared,
            accepting: Some(accepting),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `cluster`'s connection string for `dbname`, through the proxy.
    pub fn conninfo(&self, cluster: &crate::Cluster, dbname: &str) -> String {
        cluster.conninfo(dbname).replace(
            &format!("port={}", cluster.port()),
            &format!("port={}", self.port),
        )
    }

    /// Cuts every open connection, both ways; new ones are accepted.
    pub fn cut(&self) {
        for sockets in self.shared.sockets.lock().expect("not poisoned").values() {
            for socket in sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }

    /// Stops (`true`) or resumes (`false`) forwarding bytes; connections
    /// stay open and new ones are accepted (and stall too).
    pub fn stall(&self, stalled: bool) {
        self.shared.stalled.store(stalled, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.stall(false);
        self.cut();
        // Wake the accept loop so it sees `closing`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

fn accept(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for (id, client) in (0u64..).zip(listener.incoming()) {
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_read), Ok(server_read), Ok(client_cut), Ok(server_cut)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        shared
            .sockets
            .lock()
            .expect("not poisoned")
            .insert(id, [client_cut, server_cut]);
        for (from, to) in [(client_read, server), (server_read, client)] {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || forward(id, from, to, &shared));
        }
    }
}

/// Copies `from` to `to` until either end closes, holding bytes while the
/// proxy is stalled; then forgets connection `id`.
fn forward(id: u64, mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while shared.stalled.load(Ordering::Acquire) && !shared.closing.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.sockets.lock().expect("not poisoned").remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    #[test]
    fn forwards_stalls_and_cuts() {
        let proxy = TcpProxy::start(echo()).unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut reply = [0u8; 5];
        client.write_all(b"hello").unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"hello");

        proxy.stall(true);
        client.write_all(b"again").unwrap();
        assert!(client.read(&mut reply).is_err(), "nothing passes a stall");
        proxy.stall(false);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"again");

        proxy.cut();
        assert!(
            matches!(client.read(&mut reply), Ok(0) | Err(_)),
            "a cut connection ends"
        );
        // New connections work after a cut.
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        client.write_all(b"fresh").unwrap();
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"fresh");
    }
}
