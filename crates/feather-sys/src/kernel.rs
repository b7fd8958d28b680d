//! What the running kernel is new enough for, where feather has a way that works on older ones.

use std::sync::OnceLock;

/// Whether overlayfs takes its layers from a detached mount (a tmpfs made with `fsmount` that
/// no path of the host leads to) and such a mount's files can be bound elsewhere: Linux 6.15
/// and later. A throw-away VM keeps its layer in such a tmpfs where it can, else on the state
/// root's disk like a kept VM's.
pub fn takes_layers_from_detached_mounts() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        nix::sys::utsname::uname()
            .ok()
            .and_then(|name| version(&name.release().to_string_lossy()))
            .is_some_and(|release| release >= (6, 15))
    })
}

/// The major and minor numbers of a kernel release string (`6.18.44-fc-v782`, `6.1.0-28-amd64`).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_read_by_their_major_and_minor_numbers() {
        assert_eq!(version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(version("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(version("6.15"), Some((6, 15)));
        assert_eq!(version("5.10.0-rt"), Some((5, 10)));
        assert_eq!(version("garbage"), None);
        assert!((6, 9) < (6, 15) && (7, 0) > (6, 15));
    }
}
