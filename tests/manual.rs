//! The manual pages against the binary's own help: in the in-process tier (no mount needed).

use std::fs;
use std::path::Path;
use std::process::Command;

/// The manual pages name every subcommand and every long option of `--help`.
#[test]
fn man_page_covers_every_command_and_option() {
    let page = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/kmsfs.1"))
        .expect("man/kmsfs.1");
    let page = page.replace('\\', "");
    let help = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_kmsfs"))
            .args(args)
            .output()
            .expect("help");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 8, "{top}");
    for c in &commands {
        assert!(
            page.contains(&format!(".Cm {c}")),
            "man/kmsfs.1 lacks the command {c}"
        );
        for word in help(&[c, "--help"]).split_whitespace() {
            let opt = word.trim_end_matches(',');
            if opt.starts_with("--") && opt.len() > 2 && opt != "--help" {
                assert!(
                    page.contains(&format!("Fl -{}", &opt[2..])),
                    "man/kmsfs.1 lacks {opt} of {c}"
                );
            }
        }
    }
    if let Ok(o) = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning", "man/kmsfs.1", "man/kmsfs.5"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        assert!(
            o.status.success() && o.stdout.is_empty(),
            "mandoc lint: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}
