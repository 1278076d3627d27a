//! `kmsfs completions SHELL`: print a shell completion script, generated from the same clap
//! definition that parses the command line, so it always offers the options this binary has.

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
