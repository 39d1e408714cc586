//! Logins against a scripted fake server: what a man in the middle could
//! send. A real server never skips these steps, so they cannot be shown
//! against one.

use pglive_postgres::ConnectConfig;
use pglive_repl::ReplicationClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An authentication request message ('R') with `code` and `body`.
fn auth(code: u32, body: &[u8]) -> Vec<u8> {
    let mut message = vec![b'R'];
    message.extend_from_slice(&(8 + body.len() as u32).to_be_bytes());
    message.extend_from_slice(&code.to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// Reads the startup message (no type byte) and discards it.
async fn read_startup(socket: &mut TcpStream) {
    let length = socket.read_u32().await.unwrap();
    let mut body = vec![0; length as usize - 4];
    socket.read_exact(&mut body).await.unwrap();
}

/// Reads one typed message from the client: its type byte and body.
async fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = socket.read_u8().await.unwrap();
    let length = socket.read_u32().await.unwrap();
    let mut body = vec![0; length as usize - 4];
    socket.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// The client's nonce in a SASLInitialResponse body (mechanism, length,
/// `n,,n=,r=<nonce>`).
fn client_nonce(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text.find("r=").expect("a nonce") + 2;
    text[start..].trim_end_matches('\0').to_owned()
}

/// A server that starts SCRAM, with `challenge` answers the client's first
/// message with a valid challenge (the client's nonce extended), and then
/// declares the login accepted without ever sending the server's signature
/// (SASLFinal): it does not know the password.
async fn accept_without_proof(challenge: bool) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_startup(&mut socket).await;
        socket
            .write_all(&auth(10, b"SCRAM-SHA-256\0\0"))
            .await
            .unwrap();
        let (tag, body) = read_message(&mut socket).await;
        assert_eq!(tag, b'p', "SASLInitialResponse");
        if challenge {
            let nonce = client_nonce(&body);
            let reply = format!("r={nonce}server,s=c2FsdA==,i=4096");
            socket.write_all(&auth(11, reply.as_bytes())).await.unwrap();
            assert_eq!(read_message(&mut socket).await.0, b'p', "SASLResponse");
        }
        let mut accepted = auth(0, b"");
        accepted.extend_from_slice(b"Z\0\0\0\x05I");
        let _ = socket.write_all(&accepted).await;
        let _ = socket.read_u8().await;
    });
    (port, server)
}

async fn login(port: u16) -> Result<ReplicationClient, pglive_repl::Error> {
    let config = ConnectConfig::parse(&format!(
        "host=127.0.0.1 port={port} user=app password=secret dbname=shop sslmode=disable"
    ))
    .unwrap();
    ReplicationClient::connect(&config).await
}

/// Logs in against [`accept_without_proof`]`(challenge)`; the login must
/// fail for want of the server's proof.
async fn assert_refused_without_proof(challenge: bool) {
    let (port, server) = accept_without_proof(challenge).await;
    let error = login(port)
        .await
        .expect_err("a login the server never proved");
    assert!(
        matches!(error, pglive_repl::Error::ServerUnproven { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("SCRAM server proof"), "{error}");
    server.abort();
}

#[tokio::test]
async fn scram_without_the_servers_proof_is_refused_at_once() {
    assert_refused_without_proof(false).await;
}

#[tokio::test]
async fn scram_without_the_servers_proof_is_refused_after_the_challenge() {
    assert_refused_without_proof(true).await;
}

#[tokio::test]
async fn a_huge_length_before_authentication_is_refused_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_startup(&mut socket).await;
        // An authentication request that claims to be almost 4 GiB long,
        // then silence: the client must neither reserve it nor wait for it.
        socket
            .write_all(b"R\xff\xff\xff\xf0\0\0\0\x0a")
            .await
            .unwrap();
        let _ = socket.read_u8().await;
    });
    let config = ConnectConfig::parse(&format!(
        "host=127.0.0.1 port={port} user=app password=secret dbname=shop sslmode=disable connect_timeout=5"
    ))
    .unwrap();
    let error = ReplicationClient::connect(&config)
        .await
        .expect_err("a 4 GiB authentication message");
    assert!(
        matches!(error, pglive_repl::Error::Protocol { .. }),
        "refused as a protocol violation, not after a timeout: {error:?}"
    );
    server.abort();
}
