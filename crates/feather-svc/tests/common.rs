//! A scratch tree of unit files for a test, removed on drop.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Tree {
    pub root: PathBuf,
}

impl Tree {
    pub fn new(label: &str) -> Tree {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("feather-svc-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        Tree { root }
    }

    /// Writes `rel` (relative to the root) with `text`.
    pub fn write(&self, rel: &str, text: &str) -> &Tree {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        self
    }

    /// A unit file in /lib/systemd/system.
    pub fn lib(&self, name: &str, text: &str) -> &Tree {
        self.write(&format!("lib/systemd/system/{name}"), text)
    }

    pub fn link(&self, rel: &str, target: &str) -> &Tree {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
        self
    }

    pub fn paths(&self) -> feather_svc::UnitPaths {
        feather_svc::UnitPaths::new(&self.root)
    }

    pub fn load(&self, name: &str) -> feather_svc::Unit {
        self.paths()
            .load(&feather_svc::UnitName::parse(name).unwrap())
            .unwrap_or_else(|e| panic!("loading {name}: {e}"))
    }

    pub fn load_err(&self, name: &str) -> String {
        match self
            .paths()
            .load(&feather_svc::UnitName::parse(name).unwrap())
        {
            Ok(_) => panic!("{name} loaded, but should not"),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
