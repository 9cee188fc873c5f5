//! `make release` (scripts/release.sh): the tarball holds the binary and the files a user
//! needs, its checksum verifies, and the binary inside names this commit.

mod common;

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_release_tarball_holds_the_binary_and_its_papers_and_names_the_commit() {
    let out = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let printed = run(Command::new(repo.join("scripts/release.sh"))
        .arg(out.path())
        .env("NEXUS_BIN", env!("CARGO_BIN_EXE_nexus"))
        .env("NEXUS_RELEASE_IMAGE", "0"));
    let commit = common::git_commit();
    let tarball = printed
        .lines()
        .find_map(|l| l.strip_prefix("tarball: "))
        .unwrap_or_else(|| panic!("no tarball named in: {printed}"))
        .to_string();
    let file = Path::new(&tarball).file_name().unwrap().to_str().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        file.starts_with(&format!("nexus-{version}")) && file.ends_with("-linux.tar.gz"),
        "{file}"
    );
    run(Command::new("sha256sum")
        .arg("-c")
        .arg(format!("{file}.sha256"))
        .current_dir(out.path()));

    let unpacked = tempfile::tempdir().unwrap();
    run(Command::new("tar")
        .args(["-xzf", &tarball, "-C"])
        .arg(unpacked.path()));
    let top = unpacked.path().join(file.trim_end_matches(".tar.gz"));
    for needed in [
        "bin/nexus",
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "docs/api.md",
        "deploy/nexus.service",
    ] {
        assert!(top.join(needed).exists(), "{needed} missing from {file}");
    }
    let said = run(Command::new(top.join("bin/nexus")).arg("--version"));
    assert_eq!(said.trim(), format!("nexus {version} (commit {commit})"));
}
