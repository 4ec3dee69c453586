//! systemd's notify protocol (`Type=notify`): READY, WATCHDOG, STOPPING and STATUS messages sent as datagrams
//! to `$NOTIFY_SOCKET`. Outside systemd there is no socket and every call is a no-op.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notify message (`READY=1`, `STATUS=...`); returns whether systemd was there to hear it.
pub fn notify(message: &str) -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|path| notify_to(&path, message))
}

fn notify_to(path: &OsStr, message: &str) -> bool {
    let Ok(sock) = UnixDatagram::unbound() else { return false };
    let sent = if let Some(name) = path.as_encoded_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), path)
    };
    sent.is_ok()
}

/// How often systemd wants a WATCHDOG=1 (half its timeout), when the watchdog is on for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("connector-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        assert!(super::notify_to(path.as_os_str(), "READY=1"));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!super::notify_to(dir.join("absent.sock").as_os_str(), "READY=1"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
