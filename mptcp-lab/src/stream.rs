//! The MPTCP client that sends only when told to (`mptcp-peer stream`), so a test can wait until
//! the extra subflows are up and then check that data flows on them. Its server is
//! `mptcp-peer server`.
//!
//! ```text
//! mptcp-peer stream <addr:port>
//!     CONNECTED <local addr>     connected with IPPROTO_MPTCP; then obeys stdin, one a line:
//!         send <bytes>           writes that many bytes, answers SENT <bytes>
//!         close                  shuts down its side, waits for the server's FIN,
//!                                answers CLOSED and returns
//!         abort                  closes with SO_LINGER 0: Linux ends the connection with an
//!                                MP_FASTCLOSE (carrying the server's key) on an RST; answers
//!                                ABORTED and returns
//! ```

use std::{
    io::{self, BufRead},
    net::SocketAddr,
    time::Duration,
};

use crate::endpoints::{self, say, Amount};

/// How long the client waits for the server (connect, each write, the final FIN).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to `addr`, then obeys the commands of `input` until `close` or its end.
///
/// # Errors
/// On any socket error.
pub fn client(addr: SocketAddr, input: impl BufRead) -> io::Result<()> {
    let mut conn = endpoints::connect(addr, IO_TIMEOUT)?;
    for line in input.lines() {
        let line = line?;
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [] => {}
            ["send", n] => match n.parse() {
                Ok(bytes) => {
                    let sent = endpoints::write_amount(&mut conn, Amount::Bytes(bytes))?;
                    say(&format!("SENT {sent}"));
                }
                Err(e) => say(&format!("ERR send {n}: {e}")),
            },
            ["close"] => break,
            ["abort"] => {
                socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO))?;
                drop(conn);
                say("ABORTED");
                return Ok(());
            }
            _ => say(&format!("ERR unknown command {:?}", line.trim())),
        }
    }
    endpoints::close(conn)
}
