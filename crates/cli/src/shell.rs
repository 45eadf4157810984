//! Fitting in like a Unix tool: shell completions and man pages made from
//! the command-line definitions themselves (so they cannot drift from
//! them), and `ibackup help exit-codes`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::Cli;

/// The completion script for `shell`, on standard output.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ibackup", &mut std::io::stdout());
}

/// Write `ibackup.1` and one page per command (`ibackup-full.1`, ...) to
/// `dir`; the files written.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut page = |name: String, c: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        // clap takes a static name; these few live until the command ends.
        let static_name: &'static str = Box::leak(name.clone().into_boxed_str());
        clap_mangen::Man::new(c.name(static_name)).render(&mut out)?;
        std::fs::File::create(&path)?.write_all(&out)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(format!("ibackup-{}", sub.get_name()), sub.clone())?;
    }
    page("ibackup".into(), cmd)?;
    Ok(written)
}

/// docs/exit-codes.md's table, as `ibackup help exit-codes` prints it.
const EXIT_CODES: &str = include_str!("../../../docs/exit-codes.md");

/// The exit codes, one per paragraph: the code, what it means, what to do.
pub fn exit_codes() -> String {
    let mut out = String::from("ibackup's exit codes (docs/exit-codes.md):\n");
    for row in EXIT_CODES.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let [code, meaning, todo] = cells[..] else {
            continue;
        };
        if code.parse::<u32>().is_err() {
            continue;
        }
        let plain = |s: &str| s.replace('`', "").replace("\\|", "|");
        out.push_str(&format!("\n{code:>4}  {}", plain(meaning)));
        if !todo.is_empty() {
            out.push_str(&format!("\n      What to do: {}", plain(todo)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_told() {
        let t = exit_codes();
        for code in (0..=17).chain([130, 141]) {
            assert!(t.contains(&format!("\n{code:>4}  ")), "code {code}:\n{t}");
        }
        assert!(!t.contains('`'));
    }
}
