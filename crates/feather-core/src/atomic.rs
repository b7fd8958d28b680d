//! Every change of state on disk is atomic: write a temporary file beside the target, flush it,
//! rename it over the target. A reader sees the old file or the new one, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Whether a write must survive a power cut (`Durable`) or only a crash of feather itself
/// (`Volatile`, used for throw-away VMs whose state dies with them anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Volatile,
}

pub fn write_atomic(path: &Path, contents: &[u8], durability: Durability) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(contents)?;
        if durability == Durability::Durable {
            file.sync_all()?;
        }
        fs::rename(&temp, path)?;
        if durability == Durability::Durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
        .at(path)
}

/// Flushes files and folders already written (unsynced) to disk, in order: a batch written
/// first and synced here syncs a folder once for all it holds.
pub fn sync_all(paths: &[std::path::PathBuf]) -> Result<()> {
    for path in paths {
        File::open(path).and_then(|file| file.sync_all()).at(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("feather-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("state.json");
        write_atomic(&target, b"first", Durability::Durable).unwrap();
        write_atomic(&target, b"second", Durability::Volatile).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
