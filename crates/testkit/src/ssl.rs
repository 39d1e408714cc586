//! A throwaway certificate authority and server certificate, made with the
//! `openssl` command-line tool.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::process::{RunAs, command, run};

/// The files the server and its clients need.
#[derive(Debug, Clone)]
pub(crate) struct Certificates {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
}

/// Extensions of the server certificate: valid for `localhost` and
/// `127.0.0.1`, so clients can use `sslmode=verify-full`.
const SERVER_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
";

/// Makes a self-signed CA and a server certificate signed by it in `dir`
/// (which must exist and be writable by `run_as`). ECDSA P-256 keys, which
/// are fast to generate.
pub(crate) fn generate(dir: &Path, run_as: Option<RunAs>) -> Result<Certificates, Error> {
    let ext = dir.join("server.ext");
    fs::write(&ext, SERVER_EXTENSIONS).map_err(|e| Error::io("write", &ext, e))?;
    let openssl = |args: &[&str]| run(command(openssl_program(), run_as, dir).args(args));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];

    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "3650",
        "-subj",
        "/CN=pglive-testkit CA",
    ];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca)?;

    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&csr)?;

    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;

    let server_key = dir.join("server.key");
    // The server refuses a key file others can read.
    fs::set_permissions(&server_key, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("set permissions of", &server_key, e))?;
    let ca_cert = dir.join("ca.crt");
    fs::set_permissions(&ca_cert, fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("set permissions of", &ca_cert, e))?;
    Ok(Certificates {
        ca_cert,
        server_cert: dir.join("server.crt"),
        server_key,
    })
}

fn openssl_program() -> &'static str {
    if Path::new("/usr/bin/openssl").exists() {
        "/usr/bin/openssl"
    } else {
        "openssl"
    }
}
