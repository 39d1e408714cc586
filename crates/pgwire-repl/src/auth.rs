//! Authentication: trust, cleartext and MD5 passwords, SCRAM-SHA-256 with
//! and without channel binding, as the server asks for them in
//! `AuthenticationRequest` messages.

use bytes::{Buf, Bytes};
use pglive_postgres::{ChannelBinding as ChannelBindingMode, ConnectConfig};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::frontend;

use crate::client::ReplicationClient;
use crate::error::{Error, Result};

/// The codes of the `AuthenticationRequest` message ('R') kinds.
mod code {
    pub const OK: u32 = 0;
    pub const KERBEROS_V5: u32 = 2;
    pub const CLEARTEXT_PASSWORD: u32 = 3;
    pub const MD5_PASSWORD: u32 = 5;
    pub const GSS: u32 = 7;
    pub const GSS_CONTINUE: u32 = 8;
    pub const SSPI: u32 = 9;
    pub const SASL: u32 = 10;
    pub const SASL_CONTINUE: u32 = 11;
    pub const SASL_FINAL: u32 = 12;
}

/// What the server asks for in one `AuthenticationRequest`.
#[derive(Debug)]
enum Request {
    /// `AuthenticationOk`: the login is accepted.
    Ok,
    /// `AuthenticationCleartextPassword`.
    CleartextPassword,
    /// `AuthenticationMD5Password`, with its salt.
    Md5Password([u8; 4]),
    /// `AuthenticationSASL`, with the mechanisms offered.
    Sasl(Vec<String>),
    /// `AuthenticationSASLContinue`, with the server's challenge.
    SaslContinue(Bytes),
    /// `AuthenticationSASLFinal`, with the server's signature.
    SaslFinal(Bytes),
    /// A method this crate does not speak.
    Unsupported(&'static str),
}

impl Request {
    /// The request in an 'R' message's body; `Err` says what is malformed.
    fn parse(mut body: Bytes) -> std::result::Result<Request, String> {
        if body.len() < 4 {
            return Err("short authentication message".to_owned());
        }
        Ok(match body.get_u32() {
            code::OK => Request::Ok,
            code::CLEARTEXT_PASSWORD => Request::CleartextPassword,
            code::MD5_PASSWORD => {
                if body.len() < 4 {
                    return Err("short MD5 salt".to_owned());
                }
                Request::Md5Password([body[0], body[1], body[2], body[3]])
            }
            code::SASL => Request::Sasl(
                body.split(|&b| b == 0)
                    .filter(|m| !m.is_empty())
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .collect(),
            ),
            code::SASL_CONTINUE => Request::SaslContinue(body),
            code::SASL_FINAL => Request::SaslFinal(body),
            code::KERBEROS_V5 => Request::Unsupported("Kerberos V5"),
            code::GSS | code::GSS_CONTINUE => Request::Unsupported("GSSAPI"),
            code::SSPI => Request::Unsupported("SSPI"),
            other => return Err(format!("unknown authentication request {other}")),
        })
    }
}

impl ReplicationClient {
    /// With `channel_binding=require`, refuses a login that is not SCRAM
    /// bound to the TLS channel; `method` says what the server asked for.
    fn allow_unbound_login(&self, config: &ConnectConfig, method: &str) -> Result<()> {
        if config.channel_binding == ChannelBindingMode::Require {
            return Err(Error::ChannelBindingRequired {
                server: self.wire.server.clone(),
                method: method.to_owned(),
            });
        }
        Ok(())
    }

    /// Answers the server's authentication requests until it accepts the
    /// login (or refuses it).
    pub(crate) async fn authenticate(&mut self, config: &ConnectConfig) -> Result<()> {
        let server = self.wire.server.clone();
        let password = || {
            config
                .password
                .as_deref()
                .ok_or_else(|| Error::PasswordRequired {
                    server: server.clone(),
                })
        };
        let mut scram: Option<ScramSha256> = None;
        // Whether the server proved it knows the password (SASLFinal with
        // a signature that verified).
        let mut server_proved = false;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(self.server_error(&frame, "connecting")),
                b'N' => continue,
                other => return Err(self.unexpected(other, "during authentication")),
            }
            let request = Request::parse(frame.body).map_err(|e| self.wire.protocol(e))?;
            match request {
                Request::Ok => {
                    if scram.is_none() {
                        self.allow_unbound_login(config, "no password")?;
                    } else if !server_proved {
                        // Only a server that knows the password can sign the
                        // exchange; one that says yes without it may be
                        // anyone (libpq refuses this too).
                        return Err(Error::ServerUnproven {
                            server: self.wire.server.clone(),
                        });
                    }
                    return Ok(());
                }
                Request::CleartextPassword => {
                    self.allow_unbound_login(config, "a cleartext password")?;
                    let pw = password()?.to_owned();
                    frontend::password_message(pw.as_bytes(), &mut self.wire.out)
                        .map_err(|e| self.wire.protocol(e.to_string()))?;
                }
                Request::Md5Password(salt) => {
                    self.allow_unbound_login(config, "an MD5 password")?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wire.out)
                        .map_err(|e| self.wire.protocol(e.to_string()))?;
                }
                Request::Sasl(mechanisms) => {
                    scram = Some(self.start_scram(config, &mechanisms, password)?);
                }
                Request::SaslContinue(challenge) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| self.wire.protocol("SASL message before SASL started"))?;
                    client
                        .update(&challenge)
                        .map_err(|e| self.wire.protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(client.message(), &mut self.wire.out)
                        .map_err(|e| self.wire.protocol(e.to_string()))?;
                }
                Request::SaslFinal(signature) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| self.wire.protocol("SASL message before SASL started"))?;
                    client
                        .finish(&signature)
                        .map_err(|e| self.wire.protocol(format!("SCRAM server signature: {e}")))?;
                    server_proved = true;
                    continue;
                }
                Request::Unsupported(method) => {
                    return Err(Error::UnsupportedAuth {
                        server: self.wire.server.clone(),
                        method: method.to_owned(),
                    });
                }
            }
            self.wire.flush().await?;
        }
    }

    /// Chooses the SCRAM mechanism (bound to the TLS channel when both
    /// sides can) and sends the client's first message.
    fn start_scram<'c>(
        &mut self,
        config: &'c ConnectConfig,
        mechanisms: &[String],
        password: impl FnOnce() -> Result<&'c str>,
    ) -> Result<ScramSha256> {
        let offered = |name: &str| mechanisms.iter().any(|m| m == name);
        if !offered(SCRAM_SHA_256) && !offered(SCRAM_SHA_256_PLUS) {
            return Err(Error::UnsupportedAuth {
                server: self.wire.server.clone(),
                method: format!("SASL {}", mechanisms.join(", ")),
            });
        }
        let end_point = match config.channel_binding {
            ChannelBindingMode::Disable => None,
            _ => self.wire.tls_server_end_point(),
        };
        // RFC 5802's flags: `p` binds; `y` says the client could bind but
        // the server did not offer it (so a server that did offer it
        // detects the downgrade); `n` cannot bind.
        let (mechanism, binding) = match end_point {
            Some(data) if offered(SCRAM_SHA_256_PLUS) => (
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(data),
            ),
            Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
            None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        };
        if mechanism != SCRAM_SHA_256_PLUS {
            self.allow_unbound_login(config, "SCRAM without channel binding")?;
        }
        let client = ScramSha256::new(password()?.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, client.message(), &mut self.wire.out)
            .map_err(|e| self.wire.protocol(e.to_string()))?;
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: u32, rest: &[u8]) -> Bytes {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        Bytes::from(body)
    }

    #[test]
    fn requests_by_kind() {
        assert!(matches!(Request::parse(body(0, b"")), Ok(Request::Ok)));
        assert!(matches!(
            Request::parse(body(5, b"abcd")),
            Ok(Request::Md5Password(salt)) if &salt == b"abcd"
        ));
        match Request::parse(body(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")) {
            Ok(Request::Sasl(mechanisms)) => {
                assert_eq!(mechanisms, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Request::parse(body(7, b"")),
            Ok(Request::Unsupported("GSSAPI"))
        ));
        assert!(Request::parse(body(5, b"ab")).is_err());
        assert!(Request::parse(body(99, b"")).is_err());
        assert!(Request::parse(Bytes::from_static(b"\0\0")).is_err());
    }
}
