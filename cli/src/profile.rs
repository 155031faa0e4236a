//! `furnace profile`: build Volatility 3 ISF profiles.

use anyhow::{Context, Result};
use clap::Subcommand;
use furnace_vmi::profile::build::{build_profile, BuildInputs};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Write an ISF profile from a vmlinux (types from its BTF) and System.map.
    Build {
        #[arg(long)]
        vmlinux: PathBuf,
        /// Symbols; default: the vmlinux's own symbol table.
        #[arg(long)]
        system_map: Option<PathBuf>,
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

pub fn run(command: ProfileCommand) -> Result<()> {
    match command {
        ProfileCommand::Build {
            vmlinux,
            system_map,
            output,
        } => {
            let isf = build_profile(&BuildInputs {
                vmlinux: &vmlinux,
                system_map: system_map.as_deref(),
            })?;
            let file = std::fs::File::create(&output)
                .with_context(|| format!("creating {}", output.display()))?;
            serde_json::to_writer(std::io::BufWriter::new(file), &isf)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "furnace: wrote {} ({} types, {} symbols)",
                output.display(),
                isf.user_types.len(),
                isf.symbols.len()
            );
            Ok(())
        }
    }
}
