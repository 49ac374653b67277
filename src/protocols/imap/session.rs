//! Opening a session: TCP with timeouts, TLS or STARTTLS (plain only to loopback), the
//! greeting and the login. No error text leaves here holding the password.

use std::net::{TcpStream, ToSocketAddrs};

use super::{ImapAccount, Password, Security};

pub(super) type Session = imap::Session<imap::Connection>;

pub(super) enum ConnectError {
    /// The server said no to the credentials: retrying will not help.
    Refused(String),
    /// The network or the protocol failed: worth another try.
    Failed(String),
}

/// Opens and logs in a session; the errors' text never holds the password.
pub(super) fn connect(account: &ImapAccount, password: &Password) -> Result<Session, ConnectError> {
    match open_session(account, password) {
        Err(ConnectError::Refused(r)) => Err(ConnectError::Refused(password.redact(&r))),
        Err(ConnectError::Failed(r)) => Err(ConnectError::Failed(password.redact(&r))),
        ok => ok,
    }
}

fn open_session(account: &ImapAccount, password: &Password) -> Result<Session, ConnectError> {
    let failed = |e: &dyn std::fmt::Display| ConnectError::Failed(e.to_string());
    let addr = (account.host.as_str(), account.port())
        .to_socket_addrs()
        .map_err(|e| failed(&e))?
        .next()
        .ok_or_else(|| ConnectError::Failed("the host name has no address".into()))?;
    let timeout = account.timeout();
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed(&e))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    let mut client = match account.security {
        Security::Plain => {
            let mut c = imap::Client::new(Box::new(tcp) as imap::Connection);
            c.read_greeting().map_err(|e| failed(&e))?;
            c
        }
        Security::Tls => {
            let mut c = imap::Client::new(Box::new(tls(&account.host, tcp)?) as imap::Connection);
            c.read_greeting().map_err(|e| failed(&e))?;
            c
        }
        Security::Starttls => {
            let tcp = starttls(tcp).map_err(|e| failed(&e))?;
            // No second greeting after STARTTLS.
            imap::Client::new(Box::new(tls(&account.host, tcp)?) as imap::Connection)
        }
    };
    client.debug = false;
    client.login(&account.username, &password.0).map_err(|(e, _)| match e {
        imap::Error::No(_) | imap::Error::Bad(_) => ConnectError::Refused(e.to_string()),
        other => ConnectError::Failed(other.to_string()),
    })
}

/// Reads the greeting and asks for STARTTLS, line by line on the bare socket (nothing may be
/// buffered past the server's OK: the TLS handshake follows it).
fn starttls(mut tcp: TcpStream) -> std::io::Result<TcpStream> {
    use std::io::{Read, Write};
    let read_line = |tcp: &mut TcpStream| -> std::io::Result<String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if tcp.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    };
    read_line(&mut tcp)?;
    tcp.write_all(b"rd0 STARTTLS\r\n")?;
    loop {
        let line = read_line(&mut tcp)?;
        if let Some(status) = line.strip_prefix("rd0 ") {
            if status.starts_with("OK") {
                return Ok(tcp);
            }
            return Err(std::io::Error::other(format!("STARTTLS refused: {}", status.trim_end())));
        }
    }
}

fn tls(host: &str, tcp: TcpStream) -> Result<rustls_connector::TlsStream<TcpStream>, ConnectError> {
    let config = rustls_connector::RustlsConnectorConfig::new_with_native_certs()
        .map_err(|e| ConnectError::Failed(format!("no TLS root certificates: {e}")))?;
    config.connector_with_no_client_auth().connect(host, tcp).map_err(|e| ConnectError::Failed(format!("TLS: {e}")))
}
