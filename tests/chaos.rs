//! A short `nexus chaos` run (the binary itself, as users run it): about a minute of mixed
//! faults against a 3-node cluster, with 0 violations expected. `make chaos` runs 10
//! minutes; docs/reliability.md has the figures.

use std::process::Command;

#[test]
fn a_minute_of_mixed_faults_breaks_no_promise() {
    a_minute_of(&[], 2, &[]);
}

/// Storage faults: flipped bits and truncations (the damaged node refuses and is rebuilt
/// from its peers), power cuts of all three nodes at once, a slow disk (nexus-faultfs: root
/// and /dev/fuse, like the namespaces of the test above).
#[test]
fn a_minute_of_storage_faults_breaks_no_promise() {
    a_minute_of(
        &["--faults", "corrupt,truncate,power-cut,slow-disk"],
        3,
        &["corrupt", "truncate", "power-cut", "slow-disk"],
    );
}

/// Runs `nexus chaos` for a minute with `extra` arguments and seed `seed`; requires 0
/// violations, enough faults (of each kind in `kinds`) and acknowledged operations.
fn a_minute_of(extra: &[&str], seed: u64, kinds: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "chaos",
            "--duration",
            "60s",
            "--seed",
            &seed.to_string(),
            "--fault-every",
            "6s",
        ])
        .args(extra)
        // A debug build on two cores: fewer clients, so the nodes are not starved.
        .args([
            "--mix",
            "users=1,tasks=1,locks=1,topics=1",
            "--think",
            "10ms",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    if !out.status.success() {
        // Keep the history and node logs for whoever looks into it.
        let kept = dir.path().to_path_buf();
        std::mem::forget(dir);
        panic!(
            "nexus chaos found violations or failed ({:?}); history and logs kept in {}",
            out.status,
            kept.display()
        );
    }

    // Not vacuous: faults were injected and operations of every kind were acknowledged.
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).unwrap();
    let count = |needle: &str| history.lines().filter(|l| l.contains(needle)).count();
    assert!(count(r#""type":"fault""#) >= 3, "too few faults injected");
    for kind in kinds {
        assert!(
            count(&format!(r#""op":"{kind}""#)) > 0,
            "no {kind} fault injected"
        );
    }
    for op in [
        "task.push",
        "sync.lock",
        "topic.pub",
        "user.create",
        "user.setTags",
    ] {
        let acked = history
            .lines()
            .filter(|l| l.starts_with(r#"{"type":"ok""#) && l.contains(&format!(r#""op":"{op}""#)))
            .count();
        assert!(acked >= 50, "only {acked} acknowledged {op}");
    }
    // Lockers wait for locks too, and some of those waits are granted.
    let waits_granted = history
        .lines()
        .filter(|l| l.starts_with(r#"{"type":"ok""#) && l.contains(r#""op":"sync.lock""#))
        .filter(|l| l.contains(r#""wait":"#))
        .count();
    assert!(
        waits_granted >= 20,
        "only {waits_granted} lock waits granted"
    );
    assert!(stderr.contains("violations: 0"));
}
