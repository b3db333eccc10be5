//! `quiesce generate-docs --out DIR` (hidden; run by `scripts/package`): man
//! pages and shell completions generated from the CLI definition itself, so
//! they cannot drift from the options the binary accepts.

use std::io;
use std::path::Path;

use clap_complete::Shell;

/// Writes `DIR/man/*.1` (one page per visible command of each binary) and
/// `DIR/completions/{NAME.bash,_NAME,NAME.fish}` for `quiesce` and `quiesce-client`.
pub fn generate(commands: [clap::Command; 2], out: &Path) -> io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    for cmd in commands {
        clap_mangen::generate_to(cmd.clone(), &man)?;
        let name = cmd.get_name().to_string();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd.clone(), &name, &completions)?;
        }
    }
    Ok(())
}
