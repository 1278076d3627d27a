//! systemd's readiness protocol (sd_notify): with `Type=notify`, systemd passes a datagram
//! socket in NOTIFY_SOCKET and waits for READY=1 before starting what depends on the mount.

use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. "READY=1") to systemd, if it asked for notifications; errors are
/// logged, never fatal (the mount works without a supervisor).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

/// One datagram to the socket at `path` ("@name" is in the abstract namespace).
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let msg = format!("{state}\nMAINPID={}", std::process::id());
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&at).expect("bind");
        send(at.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("recv");
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with("READY=1\nMAINPID="), "{got}");
    }
}
