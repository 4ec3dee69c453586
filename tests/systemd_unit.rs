//! Issue 6, item 1: the shipped units are hardened ("OK" exposure, 2.0 or lower) and verify without errors
//! (the service, and the nightly reconcile service and its timer).

use std::path::Path;
use std::process::Command;

fn unit_named(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name)
}

fn unit() -> std::path::PathBuf {
    unit_named("connector.service")
}

#[test]
fn the_units_are_rated_ok_by_systemd_analyze_security() {
    for unit in [unit(), unit_named("connector-reconcile.service")] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
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
}

#[test]
fn the_units_verify_without_errors() {
    // Verify copies whose ExecStart names the binary this build made (the units name the installed path).
    let dir = std::env::temp_dir().join(format!("connector-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut copies = Vec::new();
    for name in ["connector.service", "connector-reconcile.service", "connector-reconcile.timer"] {
        let text = std::fs::read_to_string(unit_named(name))
            .unwrap()
            .replace("/usr/bin/connector", env!("CARGO_BIN_EXE_connector"));
        let copy = dir.join(name);
        std::fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    let out =
        Command::new("systemd-analyze").args(["verify", "--no-pager"]).args(&copies).output().expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    // Lines about other units on this machine are not ours; anything naming ours is.
    let ours: Vec<&str> =
        text.lines().filter(|l| l.contains("connector.service") || l.contains("connector-reconcile")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {text}");
}
