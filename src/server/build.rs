//! Records the git commit the binary is built from, for `nexus --version` and the
//! `nexus_build_info` metric. Outside a git checkout (a source tarball,
//! a `git archive`) the commit comes from `NEXUS_BUILD_COMMIT`, or is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=NEXUS_BUILD_COMMIT");
    // Build again when HEAD moves: HEAD itself, the branch refs (a directory: a ref
    // created or rewritten there counts) and the packed refs. Only paths that exist are
    // named: cargo takes a missing one for changed and would rerun on every build.
    // `--git-path` finds the refs of a worktree in the shared git dir.
    for what in ["HEAD", "refs/heads", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", what]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = std::env::var("NEXUS_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=NEXUS_BUILD_COMMIT={commit}");
}
