//! The CLI's config file (`~/.config/nexus/cli.toml`, or `--config`) and its named
//! contexts: a context is a cluster to talk to (its URLs, CA and user), chosen with
//! `--context NAME`, `NEXUS_CONTEXT`, or `nexus context use NAME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, NamedContext>,
}

/// One cluster to talk to. No password: that stays in `NEXUS_PASSWORD`, the terminal, or
/// the file's top-level `password`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedContext {
    /// One URL or several, comma-separated: tried in order until one answers.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ContextCmd {
    /// Adds (or replaces) a named context: the URLs of a cluster, and optionally its CA
    /// and the user to log in as.
    Add {
        name: String,
        /// One URL or several (repeat, or comma-separated): tried in order.
        #[arg(long, required = true, value_delimiter = ',')]
        url: Vec<String>,
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        #[arg(long)]
        user: Option<String>,
    },
    /// Makes a context the one used when neither --context nor NEXUS_CONTEXT names one.
    Use { name: String },
    /// The contexts, the current one marked.
    List,
    /// Removes a context.
    Remove { name: String },
}

/// The file `--config` names (which must exist to be read), else the default one.
pub fn path(named: Option<&Path>) -> Option<(PathBuf, bool)> {
    match named {
        Some(p) => Some((p.to_path_buf(), true)),
        None => std::env::var_os("HOME")
            .map(|home| (PathBuf::from(home).join(".config/nexus/cli.toml"), false)),
    }
}

/// Reads the config file; a missing default file is an empty one.
pub fn read(named: Option<&Path>) -> anyhow::Result<ConfigFile> {
    let Some((path, required)) = path(named) else {
        return Ok(ConfigFile::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConfigFile::default())
        }
        Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
    };
    toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))
}

/// Writes the config file, readable by its owner only (it may hold a password).
fn write(named: Option<&Path>, file: &ConfigFile) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (path, _) = path(named).ok_or_else(|| anyhow!("no HOME: name a file with --config"))?;
    // A symlinked config (dotfiles) is written where it points, not replaced by a file.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("creating {}: {e}", dir.display()))?;
    }
    let text = toml::to_string(file).map_err(|e| anyhow!("encoding the config: {e}"))?;
    // Written beside it, then renamed over it: a crash leaves the old file or the new one.
    // Made afresh (a leftover of a crash could have another mode): 0600 from the start.
    let tmp = path.with_extension("toml.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs a `context` command; it connects to nothing.
pub fn run(named: Option<&Path>, cmd: ContextCmd) -> anyhow::Result<Value> {
    let mut file = read(named)?;
    match cmd {
        ContextCmd::Add {
            name,
            url,
            ca,
            user,
        } => {
            let url = url.join(",");
            file.contexts
                .insert(name.clone(), NamedContext { url, ca, user });
            let path = write(named, &file)?;
            Ok(json!({"ok": true, "context": name, "file": path}))
        }
        ContextCmd::Use { name } => {
            if !file.contexts.contains_key(&name) {
                bail!("no context {name} (nexus context list)");
            }
            file.current_context = Some(name.clone());
            write(named, &file)?;
            Ok(json!({"ok": true, "current": name}))
        }
        ContextCmd::List => Ok(Value::Array(
            file.contexts
                .iter()
                .map(|(name, c)| {
                    json!({
                        "current": file.current_context.as_deref() == Some(name.as_str()),
                        "name": name,
                        "url": c.url,
                        "user": c.user,
                    })
                })
                .collect(),
        )),
        ContextCmd::Remove { name } => {
            if file.contexts.remove(&name).is_none() {
                bail!("no context {name}");
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            write(named, &file)?;
            Ok(json!({"ok": true, "removed": name}))
        }
    }
}

/// The context in force: `chosen` (flag or variable), else the file's current one.
pub fn in_force<'a>(
    file: &'a ConfigFile,
    chosen: Option<&str>,
) -> anyhow::Result<Option<&'a NamedContext>> {
    match chosen.or(file.current_context.as_deref()) {
        None => Ok(None),
        Some(name) => file
            .contexts
            .get(name)
            .map(Some)
            .ok_or_else(|| anyhow!("no context {name} (nexus context list)")),
    }
}
