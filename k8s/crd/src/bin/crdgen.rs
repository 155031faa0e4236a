//! Writes the FurnaceGuest and FurnaceApp definitions to `crds/`, or with
//! `--check` says which files differ from what the types generate.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Write (or check) the furnace.dev CustomResourceDefinitions")]
struct Args {
    /// The directory the YAML files go to.
    #[arg(long, default_value = "crds")]
    out: PathBuf,
    /// Write nothing; exit 1 if any file is missing or differs.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut drifted = false;
    for (name, crd) in furnace_crd::crds() {
        let path = args.out.join(name);
        let yaml = match furnace_crd::to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: {name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if args.check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!(
                    "crdgen: {} differs from the types; run `cargo run -p furnace-crd --bin crdgen`",
                    path.display()
                );
                drifted = true;
            }
        } else if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("crdgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("{}", path.display());
        }
    }
    if drifted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
