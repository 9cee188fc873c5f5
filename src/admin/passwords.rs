//! Where the CLI's passwords come from: never the command line, where `ps` and the shell's
//! history show them. The login password: `--password-stdin`, `NEXUS_PASSWORD`, the config
//! file, or a prompt on the terminal. A new password (`user create`, `user passwd`):
//! `--stdin`, `NEXUS_NEW_PASSWORD`, or asked twice on the terminal. Both from standard
//! input: the login password is its first line, the new one the next.

use std::io::{BufRead, IsTerminal};

use anyhow::{anyhow, bail};

/// Refusal of a password given on the command line.
pub fn refuse_argv(flag: &str) -> anyhow::Error {
    anyhow!(
        "{flag} is not taken on the command line (ps and the shell's history would show it): \
         give it in the environment, on standard input, or when asked"
    )
}

/// Standard input, read a line at a time as passwords are needed.
#[derive(Default)]
pub struct Stdin {
    lines_read: usize,
}

impl Stdin {
    /// The next line of standard input, without its line ending.
    pub fn line(&mut self, what: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = std::io::stdin().lock().read_line(&mut line)?;
        self.lines_read += 1;
        if n == 0 {
            bail!(
                "standard input ended before {what} (line {})",
                self.lines_read
            );
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

/// Asks on the terminal; an error when there is none.
pub fn ask(prompt: &str, source_hint: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given and no terminal to ask on: {source_hint}");
    }
    Ok(rpassword::prompt_password(format!("{prompt}: "))?)
}

/// A new password: `--stdin`, else `NEXUS_NEW_PASSWORD`, else asked twice.
pub fn new_password(user: &str, from_stdin: bool, stdin: &mut Stdin) -> anyhow::Result<String> {
    let pass = if from_stdin {
        stdin.line("the new password")?
    } else if let Ok(p) = std::env::var("NEXUS_NEW_PASSWORD") {
        p
    } else {
        let hint = "use --stdin or NEXUS_NEW_PASSWORD";
        let first = ask(&format!("New password for {user}"), hint)?;
        if ask("Again", hint)? != first {
            bail!("the two passwords differ");
        }
        first
    };
    if pass.is_empty() {
        bail!("the new password is empty");
    }
    Ok(pass)
}
