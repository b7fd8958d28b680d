//! Values a shell can complete that only this host knows (clap's candidates): kept apart from
//! crate::completion, which needs the whole command line, so that crate::cli can name them.

use std::path::PathBuf;

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use feather_core::StateRoot;

/// Completes an existing VM's name: those of the state root in `FEATHER_ROOT` (or the default
/// one). A `--root` typed on the same line is not seen (clap gives candidates no context); a
/// root the user may not read completes nothing.
pub fn vm_names() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let root = StateRoot::new(std::env::var_os("FEATHER_ROOT").map(PathBuf::from));
        let mut names: Vec<String> = root
            .list()
            .unwrap_or_default()
            .iter()
            .map(|vm| vm.name().to_string())
            .collect();
        names.sort();
        names.into_iter().map(CompletionCandidate::new).collect()
    })
}
