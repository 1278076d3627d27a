//! `kmsfs completions SHELL`: print a shell completion script, generated from the same clap
//! definition that parses the command line, so it always offers the options this binary has.
//! The scripts the package ships (`completions/`) are this output, checked by a test below.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, CliResult};

/// `kmsfs completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// The completion script for `shell`, exactly as `kmsfs completions SHELL` prints it.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kmsfs", &mut out);
    out
}

/// Run `kmsfs completions`.
pub fn run(args: &CompletionsArgs) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script(args.shell))
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing the completion script: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in scripts under `completions/` and the shell each is for (the names
    /// `scripts/completions` writes and Cargo.toml's package metadata installs).
    const SHIPPED: &[(Shell, &str)] = &[
        (Shell::Bash, "kmsfs.bash"),
        (Shell::Zsh, "_kmsfs"),
        (Shell::Fish, "kmsfs.fish"),
    ];

    /// The shipped scripts are what this binary generates: a new option or subcommand without
    /// regenerating them fails here rather than leaving installed completions stale.
    #[test]
    fn shipped_completions_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
        let mut stale = Vec::new();
        for &(shell, name) in SHIPPED {
            let path = dir.join(name);
            let on_disk = std::fs::read(&path).unwrap_or_default();
            if on_disk != script(shell) {
                stale.push(format!("completions/{name}"));
            }
        }
        assert!(
            stale.is_empty(),
            "{}: not what `kmsfs completions` prints now; run scripts/completions and commit",
            stale.join(", ")
        );
    }

    #[test]
    fn every_script_names_the_subcommands() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let text = String::from_utf8(script(shell)).expect("utf-8");
            for sub in ["init", "mount", "unmount", "completions"] {
                assert!(text.contains(sub), "{shell}: no {sub}");
            }
        }
    }
}
