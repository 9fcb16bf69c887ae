//! `bulwark keygen` and `bulwark key`.

use std::path::PathBuf;

use anyhow::Context;
use bulwark_capabilities::KeyPair;
use clap::{Args, Subcommand};

use crate::Outcome;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the private key; must not exist yet.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Print the public key (hex) of a private key file.
    Public {
        /// The private key file.
        file: PathBuf,
    },
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<Outcome> {
    let key = KeyPair::generate();
    key.save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", key.public());
    Ok(Outcome::Success)
}

pub fn run(cmd: KeyCommand) -> anyhow::Result<Outcome> {
    match cmd {
        KeyCommand::Public { file } => {
            println!("{}", KeyPair::load(&file)?.public());
            Ok(Outcome::Success)
        }
    }
}
