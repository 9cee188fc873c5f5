//! `nexus serve --config FILE` and `--print-config`. A key of the file is a flag's long
//! name; a flag given on the command line or by its NEXUS_* variable wins over the file,
//! and the file over the default. The file's values are handed to clap as the flags they
//! stand for, so they are checked exactly as flags are.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, Context};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Flags that only the command line gives: the file itself, and one-time actions that must
/// not repeat at every start of a node whose file or environment names them.
const COMMAND_LINE_ONLY: &[&str] = &["config", "print_config", "restore", "force_new_cluster"];

/// Settings a file may not hold: the cluster secret comes from its variable or its own
/// file (`cluster-secret-file`), never from a settings file that is shared and printed.
const NOT_IN_FILES: &[&str] = &["cluster_secret"];

/// A flag a file (or variable) may set.
fn settable(arg: &Arg) -> bool {
    let id = arg.get_id().as_str();
    arg.get_long().is_some()
        && !COMMAND_LINE_ONLY.contains(&id)
        && !NOT_IN_FILES.contains(&id)
        && !id.starts_with("test_")
        && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
}

/// The keys a config file may hold: the long names of `serve`'s settable flags.
pub fn keys(serve: &Command) -> Vec<String> {
    serve
        .get_arguments()
        .filter(|a| settable(a))
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// The flags `path` adds to `serve`'s command line: one for each key whose flag was given
/// neither on the command line nor by its variable. An unknown key, or a value of the wrong
/// shape, is an error naming the key and the file.
pub fn file_args(serve: &Command, given: &ArgMatches, path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow!("{}: {}", path.display(), e.message()))?;
    let mut extra = Vec::new();
    for (key, value) in table {
        let arg = serve
            .get_arguments()
            .find(|a| settable(a) && a.get_long() == Some(key.as_str()))
            .ok_or_else(|| {
                anyhow!(
                    "{}: unknown key `{key}` (the keys are the long names of `nexus serve`'s \
                     flags, as `nexus serve --help` lists them)",
                    path.display()
                )
            })?;
        let source = given.value_source(arg.get_id().as_str());
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |what: &str| anyhow!("{}: `{key}` must be {what}", path.display());
        let flag = format!("--{key}");
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if on {
                    extra.push(flag);
                }
            }
            (ArgAction::SetTrue, _) => return Err(bad("true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    let item = scalar(&item).ok_or_else(|| bad("a list of strings"))?;
                    extra.push(format!("{flag}={item}"));
                }
            }
            (_, toml::Value::Array(_)) => return Err(bad("a single value, not a list")),
            (_, value) => {
                let value = scalar(&value).ok_or_else(|| bad("a string or a number"))?;
                extra.push(format!("{flag}={value}"));
            }
        }
    }
    Ok(extra)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}

/// The settings in force as a config file, each with where it came from. `from_file` are
/// the keys the config file gave. Secrets (`--root-password`, the cluster secret) are named
/// as set or not, never shown.
pub fn print(serve: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = String::from(
        "# The settings `nexus serve` runs with (flag, then NEXUS_* variable, then config\n\
         # file, then default). Usable as a config file; secrets are left out.\n",
    );
    for arg in serve.get_arguments().filter(|a| settable(a)) {
        let (id, key) = (arg.get_id().as_str(), arg.get_long().expect("settable"));
        let source = match matches.value_source(id) {
            _ if from_file.contains(key) => "config file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let line = if arg.is_hide_env_values_set() {
            let set = if raw.is_empty() { "not set" } else { "set" };
            format!("# {key}: {set} (a secret, not shown)")
        } else {
            match arg.get_action() {
                ArgAction::SetTrue => format!("{key} = {}", matches.get_flag(id)),
                ArgAction::Append => {
                    let items: Vec<String> = raw.iter().map(|v| quoted(v)).collect();
                    format!("{key} = [{}]", items.join(", "))
                }
                _ => match raw.first() {
                    None => format!("# {key} = (not set)"),
                    Some(v) if v.parse::<i64>().is_ok() => format!("{key} = {v}"),
                    Some(v) => format!("{key} = {}", quoted(v)),
                },
            }
        };
        out.push_str(&format!("{line:<48} # {source}\n"));
    }
    out
}

/// Parses `argv` (the whole command line) with `cli`; when it runs `serve --config FILE`,
/// parses again with the file's flags added. Returns the matches and the keys the file
/// gave. Errors are for the user: clap's own, or the file's.
pub fn parse_with_file(
    cli: &Command,
    argv: Vec<std::ffi::OsString>,
) -> anyhow::Result<(ArgMatches, BTreeSet<String>)> {
    let matches = cli.clone().try_get_matches_from(&argv)?;
    let Some(("serve", serve_matches)) = matches.subcommand() else {
        return Ok((matches, BTreeSet::new()));
    };
    let Some(path) = serve_matches.get_one::<std::path::PathBuf>("config") else {
        return Ok((matches, BTreeSet::new()));
    };
    let serve = cli
        .find_subcommand("serve")
        .expect("the serve subcommand exists");
    let extra = file_args(serve, serve_matches, path)?;
    let from_file: BTreeSet<String> = extra
        .iter()
        .filter_map(|f| f.strip_prefix("--"))
        .map(|f| f.split('=').next().unwrap_or(f).to_string())
        .collect();
    let mut argv = argv;
    argv.extend(extra.into_iter().map(Into::into));
    let matches = cli
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|e| anyhow!("{} (with the settings of {})", e, path.display()))?;
    Ok((matches, from_file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Serve(crate::config::ServeArgs),
    }

    #[test]
    fn every_settable_flag_has_a_nexus_variable_named_after_it() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let keys = keys(serve);
        assert!(keys.len() > 40, "{keys:?}");
        for arg in serve.get_arguments().filter(|a| settable(a)) {
            let long = arg.get_long().unwrap();
            let expected = format!("NEXUS_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                Some(expected),
                "--{long}"
            );
        }
        for id in COMMAND_LINE_ONLY {
            let arg = serve.get_arguments().find(|a| a.get_id() == *id).unwrap();
            let allowed = *id == "config";
            assert_eq!(arg.get_env().is_some(), allowed, "--{id}");
        }
    }

    #[test]
    fn flags_beat_variables_beat_the_file_beats_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nexus.toml");
        std::fs::write(
            &file,
            "watchdog = 30\nmax-inflight = 7\nlisten = [\"tcp://127.0.0.1:1\"]\nverbose = true\n",
        )
        .unwrap();
        let cli = Cli::command();
        let argv = |extra: &[&str]| {
            let mut v = vec!["nexus", "serve", "--config", file.to_str().unwrap()];
            v.extend_from_slice(extra);
            v.into_iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        let (m, from_file) = parse_with_file(&cli, argv(&["--max-inflight", "9"])).unwrap();
        let Cmd::Serve(args) = Cli::from_arg_matches(&m).unwrap().cmd;
        assert_eq!(args.watchdog, 30, "the file beats the default");
        assert_eq!(args.max_inflight, 9, "a flag beats the file");
        assert_eq!(args.listen, ["tcp://127.0.0.1:1"]);
        assert!(args.verbose);
        assert_eq!(args.raft_tick_ms, 50, "the default stays");
        assert!(from_file.contains("watchdog") && !from_file.contains("max-inflight"));
    }

    #[test]
    fn an_unknown_key_or_a_wrong_shape_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::command();
        for (text, says) in [
            ("wachdog = 3\n", "unknown key `wachdog`"),
            ("verbose = 3\n", "`verbose` must be true or false"),
            ("watchdog = [1]\n", "`watchdog` must be a single value"),
            ("watchdog = \"soon\"\n", "soon"),
        ] {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let argv = ["nexus", "serve", "--config", file.to_str().unwrap()];
            let e = parse_with_file(&cli, argv.iter().map(Into::into).collect()).unwrap_err();
            let e = e.to_string();
            assert!(e.contains(says) && e.contains("bad.toml"), "{text}: {e}");
        }
    }
}
