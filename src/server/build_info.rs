//! What this binary is: the program version and the git commit it was built from
//! (recorded by `build.rs`).

/// The program version (`Cargo.toml`), not the API level (`sys.version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit, 12 hex digits, or `unknown` for a build outside a git checkout.
pub const COMMIT: &str = env!("NEXUS_BUILD_COMMIT");

/// `nexus --version` after the program name.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NEXUS_BUILD_COMMIT"),
    ")"
);
