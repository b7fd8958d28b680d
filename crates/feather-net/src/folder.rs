//! The folders feather-net makes in a state root.

use std::fs;
use std::path::Path;

/// Makes folder `path` of a state root unless it is there, never its parents: a root's folder
/// removed meanwhile (its VMs, its network, then the folder; a process still ending, such as
/// the one a `run --rm` handed its teardown to, may come here after) stays removed. Made with
/// its parents, the pool's folder made the removed root again.
pub(crate) fn make_dir(path: &Path) -> std::io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}
