//! The test-only hooks: `FEATHER_TEST_*` variables a test sets in the environment of a keeper (or
//! of `feather serve`, `migrate`) to hold it at one step ([`held`]: the `HOLD_*` of
//! [`crate::keeper`], [`crate::snapshot::HOLD_AFTER_RESTORE_RECORD`],
//! [`crate::rootfs::HOLD_AFTER_MOUNTS_FOUND`], which a VM's init waits for,
//! [`crate::snapshot::HOLD_BEFORE_RESTORED_CHECK`] and
//! [`crate::snapshot::HOLD_AT_POST_RESTORE`], which a restoring keeper waits for,
//! [`crate::pool::HOLD_FILL`], which a fill under its lock waits for, and
//! [`crate::pool::HOLD_FILL_START`], which a fill waits for before it takes its lock,
//! [`crate::pool::HOLD_FILL_WAIT`], which a fill behind another waits for before it waits,
//! [`crate::pool::HOLD_FENCED`], which `network down` waits for with its pool fence in place,
//! [`crate::pool::HOLD_EMPTYING`], which it waits for with an existing pool's size fenced, and
//! [`crate::keeper::HOLD_AFTER_REFILL`], which a claimed VM's keeper waits for after it started
//! the refill, and [`crate::keeper::HOLD_BEFORE_LEASE_RETURN`], which a keeper tearing its
//! throw-away VM down itself waits for before it returns the VM's lease)
//! or make one step fail ([`set`]: [`crate::snapshot::FAIL_LAYERS`],
//! [`crate::snapshot::FAIL_IMAGES_SYNC`],
//! [`crate::checkpoint::FAIL_AFTER_DUMPED`], [`crate::keeper::FAIL_SEIZED_FREEZE`],
//! [`crate::migration::FAIL_RELEASE_RECORD`], [`crate::snapshot::CRIU_CONFIG_MISSING`],
//! [`crate::root_watch::NO_INOTIFY`],
//! [`crate::snapshot::FAIL_RESTORED_THAW`], or answer
//! as an older keeper: [`crate::keeper::AS_AN_OLDER_KEEPER`], or search less:
//! [`crate::diff::HOLDS_ENTRIES_HOOK`]). Only a debug build reads them — the
//! tests run debug builds — so a release keeper cannot be held in the middle of a dump, with its VM
//! frozen or seized, nor made to fail one, by whatever sets its environment.

use std::ffi::OsString;

/// The value of the test-only `variable`: what the environment holds in a debug build, None
/// in a release build whatever it holds.
#[cfg(debug_assertions)]
pub(crate) fn set(variable: &str) -> Option<OsString> {
    std::env::var_os(variable)
}

/// The value of the test-only `variable`: what the environment holds in a debug build, None
/// in a release build whatever it holds.
#[cfg(not(debug_assertions))]
pub(crate) fn set(_variable: &str) -> Option<OsString> {
    None
}

/// Whether the test-only failure `variable` is armed: [`set`] to anything but an absolute path,
/// or to the absolute path of a file that exists, so that a test can disarm it for a process
/// already running (by removing that file) and see what the failure left.
pub(crate) fn armed(variable: &str) -> bool {
    set(variable).is_some_and(|value| {
        let path = std::path::Path::new(&value);
        !path.is_absolute() || path.exists()
    })
}

/// Waits for the lock of the file the test-only `variable` names (shared, blocking), if it is
/// [`set`]: the test holding that lock lets the process go on.
pub(crate) fn held(variable: &str) {
    if let Some(path) = set(variable) {
        held_by(&path);
    }
}

/// Waits for the lock of the file at `path` (shared, blocking), which a test holds: [`held`]
/// for a value read earlier (before the process cleared its environment).
pub(crate) fn held_by(path: &std::ffi::OsStr) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.lock_shared();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A debug build reads what the environment holds; a release build nothing. The suite runs
    /// debug builds; the release side is checked by running this test with debug assertions off
    /// (`--config 'profile.dev.package.feather-vm.debug-assertions=false'`).
    #[test]
    fn a_hook_is_read_by_a_debug_build_only() {
        // PATH: a variable the test's environment holds, read without changing it (another
        // test's thread may read the environment meanwhile).
        assert!(std::env::var_os("PATH").is_some());
        assert_eq!(set("PATH").is_some(), cfg!(debug_assertions));
    }
}
