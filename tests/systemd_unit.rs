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
    // --man=no: the units' Documentation=man:connector(1) is installed by the package, not here
    // (scripts/package-test.sh verifies the installed units with it).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--no-pager", "--man=no"])
        .args(&copies)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    // Lines about other units on this machine are not ours; anything naming ours is.
    let ours: Vec<&str> =
        text.lines().filter(|l| l.contains("connector.service") || l.contains("connector-reconcile")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {text}");
}

/// The value of `key=` in a unit file (the last one wins, as in systemd).
fn setting(unit: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(unit).unwrap();
    text.lines().filter_map(|l| l.trim().strip_prefix(&format!("{key}="))).next_back().map(|v| v.trim().to_string())
}

fn bytes(value: &str) -> u64 {
    let (n, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("not a size: {value}"));
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => panic!("unit {other} in {value}"),
    }
}

/// Issue 12, item 9: memory and file descriptors are bounded, so one hostile export (or a descriptor leak)
/// cannot take the host down; personal data is never swapped out.
#[test]
fn the_units_bound_memory_and_file_descriptors() {
    for unit in [unit(), unit_named("connector-reconcile.service")] {
        let name = unit.display().to_string();
        let max = setting(&unit, "MemoryMax").unwrap_or_else(|| panic!("{name}: no MemoryMax="));
        let max = bytes(&max);
        assert!((512 << 20..=4 << 30).contains(&max), "{name}: MemoryMax={max} bytes");
        // The readers' own worst case (XLSX open parts, one JSON record, the read-ahead) fits well below it.
        let open_parts = york_connector::ingest::limits::MAX_XLSX_OPEN_PARTS_BYTES;
        assert!(max >= 8 * open_parts, "{name}: MemoryMax leaves no room for the XLSX reader's bound");
        if let Some(high) = setting(&unit, "MemoryHigh") {
            assert!(bytes(&high) < max, "{name}: MemoryHigh should throttle before MemoryMax kills");
        }
        assert_eq!(setting(&unit, "MemorySwapMax").as_deref(), Some("0"), "{name}: personal data must not be swapped");
        let nofile = setting(&unit, "LimitNOFILE").unwrap_or_else(|| panic!("{name}: no LimitNOFILE="));
        let nofile: u64 = nofile.split(':').next_back().unwrap().parse().unwrap_or_else(|_| panic!("{name}: {nofile}"));
        assert!((256..=65_536).contains(&nofile), "{name}: LimitNOFILE={nofile}");
    }
}
