//! `connector run` as a child process for black-box daemon tests: started with a config, its log read as it
//! grows, signalled, stopped. Killed if the test fails half way.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon under test.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `connector run --config CONFIG` logging at info to `log` (appended: a restart adds to it), and
    /// waits until it says it is running.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        let before = std::fs::read_to_string(log).unwrap_or_default().matches("Connector running.").count();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_connector"))
            .args(["run", "--config"])
            .arg(config)
            .env("CONNECTOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut d = Daemon { child, log: log.to_path_buf() };
        d.wait_for("Connector running.", before);
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `text` more than `seen` times; returns the log.
    pub fn wait_for(&mut self, text: &str, seen: usize) -> String {
        self.wait_for_any(&[text], seen)
    }

    /// Waits until the log holds any of `texts` more than `seen` times in all; returns the log.
    pub fn wait_for_any(&mut self, texts: &[&str], seen: usize) -> String {
        let text = texts.join("\" or \"");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if texts.iter().map(|t| log.matches(t).count()).sum::<usize>() > seen {
                return log;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) while waiting for {text:?}:\n{log}");
            }
            assert!(Instant::now() < deadline, "no {text:?} in the log within a minute:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    pub fn assert_running(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the daemon stopped:\n{}", self.log());
    }

    /// SIGTERM, then waits (up to 30 s) for it to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET path` on a loopback port: the whole answer (status line, headers, body), or `None` when nothing
/// listens there.
pub fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}
