//! Issue 6, item 1: the shipped unit is hardened ("OK" exposure, 2.0 or lower) and verifies without errors.

use std::path::Path;
use std::process::Command;

fn unit() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/connector.service")
}

#[test]
fn the_unit_is_rated_ok_by_systemd_analyze_security() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit())
        .output()
        .expect("systemd-analyze is needed (Debian package systemd)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the level in {line:?}"));
    assert!(level <= 2.0, "exposure {level} is above 2.0: {line}");
    assert!(line.contains("OK"), "{line}");
}

#[test]
fn the_unit_verifies_without_errors() {
    // Verify a copy whose ExecStart names the binary this build made (the unit names the installed path).
    let dir = std::env::temp_dir().join(format!("connector-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(unit()).unwrap().replace("/usr/bin/connector", env!("CARGO_BIN_EXE_connector"));
    let copy = dir.join("connector.service");
    std::fs::write(&copy, text).unwrap();
    let out =
        Command::new("systemd-analyze").args(["verify", "--no-pager"]).arg(&copy).output().expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    // Lines about other units on this machine are not ours; anything naming connector.service is.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("connector.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {text}");
}
