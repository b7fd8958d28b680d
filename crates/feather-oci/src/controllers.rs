//! The resources feather-sys's cgroup code does not know, each applied where this host has
//! its controller — as a v1 hierarchy, else on the v2 hierarchy — or refused by its field's
//! name before anything is made:
//!
//! | field | v1 | v2 |
//! |---|---|---|
//! | `cpu.cpus`, `cpu.mems` | `cpuset.cpus`, `cpuset.mems` | the same |
//! | `blockIO.weight`, `weightDevice` | `blkio.weight(_device)` or `blkio.bfq.*` | `io.weight`, `io.bfq.weight` |
//! | `blockIO.throttle*Device` | `blkio.throttle.*` | `io.max` |
//! | `hugepageLimits` | `hugetlb.<size>.limit_in_bytes` | `hugetlb.<size>.max` |
//! | `unified` | refused | the named file, its controller enabled for the group |
//!
//! The group's folders in the v1 cpuset, blkio and hugetlb hierarchies are made here (with
//! cpuset's cpus and mems copied down from the parent, which v1 leaves empty).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxBlockIo, LinuxResources, LinuxThrottleDevice};

use crate::hierarchies::{v1_mount, v2_mount};

/// The v1 hierarchies whose folders feather-oci makes itself (besides the freezer).
pub const V1_OWN: [&str; 3] = ["cpuset", "blkio", "hugetlb"];

/// Where a controller lives on this host.
enum Place {
    V1(PathBuf),
    V2(PathBuf),
}

fn locate(controller: &str) -> Option<Place> {
    if let Some(mount) = v1_mount(controller) {
        return Some(Place::V1(mount));
    }
    let mount = v2_mount()?;
    let offered = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    offered
        .split_whitespace()
        .any(|c| c == controller)
        .then_some(Place::V2(mount))
}

/// Refuses, by name, what this host cannot apply.
pub fn check(resources: &LinuxResources) -> Result<()> {
    if let Some(cpu) = resources.cpu() {
        for (field, value) in [("cpus", cpu.cpus()), ("mems", cpu.mems())] {
            if value.as_ref().is_some_and(|v| !v.is_empty()) && locate("cpuset").is_none() {
                bail!("linux.resources.cpu.{field}: this host has no cpuset controller");
            }
        }
    }
    if let Some(io) = resources.block_io() {
        check_block_io(io)?;
    }
    for limit in resources.hugepage_limits().iter().flatten() {
        let field = format!("linux.resources.hugepageLimits[{}]", limit.page_size());
        if locate("hugetlb").is_none() {
            bail!("{field}: this host has no hugetlb controller");
        }
        if page_kib(limit.page_size()).is_none() {
            bail!(
                "{field}: not a huge page size of this host (it has {})",
                host_page_sizes().join(", ")
            );
        }
    }
    for key in resources.unified().iter().flatten().map(|(k, _)| k) {
        unified_controller(key)?;
    }
    Ok(())
}

fn check_block_io(io: &LinuxBlockIo) -> Result<()> {
    if io.leaf_weight().is_some_and(|w| w > 0)
        || io
            .weight_device()
            .iter()
            .flatten()
            .any(|d| d.leaf_weight().is_some_and(|w| w > 0))
    {
        bail!("linux.resources.blockIO.leafWeight: not supported by feather-oci (leaf weights were CFQ's, which this kernel does not have)");
    }
    let weights = io.weight().is_some_and(|w| w > 0)
        || io.weight_device().as_ref().is_some_and(|d| !d.is_empty());
    if weights && weight_file(false).is_none() {
        bail!("linux.resources.blockIO.weight: this host's block I/O controller has no weights (its disks' I/O scheduler is not BFQ)");
    }
    let throttles = throttles(io).any(|(_, devices)| !devices.is_empty());
    if throttles && locate("blkio").or_else(|| locate("io")).is_none() {
        bail!("linux.resources.blockIO.throttle: this host has no block I/O controller");
    }
    Ok(())
}

/// The four throttles: (v1 file suffix, v2 io.max key) with their devices.
fn throttles(
    io: &LinuxBlockIo,
) -> impl Iterator<Item = ((&'static str, &'static str), Vec<LinuxThrottleDevice>)> + '_ {
    [
        (("read_bps_device", "rbps"), io.throttle_read_bps_device()),
        (("write_bps_device", "wbps"), io.throttle_write_bps_device()),
        (
            ("read_iops_device", "riops"),
            io.throttle_read_iops_device(),
        ),
        (
            ("write_iops_device", "wiops"),
            io.throttle_write_iops_device(),
        ),
    ]
    .into_iter()
    .map(|(names, devices)| (names, devices.clone().unwrap_or_default()))
}

/// The weight file this host has (`device`: the per-device one), and where.
fn weight_file(device: bool) -> Option<(Place, String)> {
    let suffix = if device { "weight_device" } else { "weight" };
    if let Some(mount) = v1_mount("blkio") {
        return ["blkio.", "blkio.bfq."]
            .iter()
            .map(|prefix| format!("{prefix}{suffix}"))
            .find(|file| mount.join(file).exists())
            .map(|file| (Place::V1(mount.clone()), file));
    }
    // v2 keeps one file for both; the root group has none, so the controller is what tells.
    match locate("io")? {
        Place::V2(mount) => Some((Place::V2(mount), "io.weight".to_owned())),
        Place::V1(_) => None,
    }
}

/// "2MB" → 2048, as /sys/kernel/mm/hugepages names them, if this host has that size.
fn page_kib(size: &str) -> Option<u64> {
    let split = size.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = size.split_at(split);
    let number: u64 = number.parse().ok()?;
    let kib = match unit {
        "KB" => number,
        "MB" => number << 10,
        "GB" => number << 20,
        _ => return None,
    };
    Path::new(&format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB"))
        .exists()
        .then_some(kib)
}

fn host_page_sizes() -> Vec<String> {
    let mut kib: Vec<u64> = fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()
        })
        .collect();
    kib.sort_unstable();
    kib.into_iter()
        .map(|k| match k {
            k if k >= 1 << 20 => format!("{}GB", k >> 20),
            k if k >= 1 << 10 => format!("{}MB", k >> 10),
            k => format!("{k}KB"),
        })
        .collect()
}

/// The v2 controller a `unified` key belongs to ("" for the core `cgroup.*` files), if this
/// host can take it.
fn unified_controller(key: &str) -> Result<&str> {
    let field = format!("linux.resources.unified[{key}]");
    let Some(mount) = v2_mount() else {
        bail!("{field}: this host has no cgroup v2 hierarchy");
    };
    let Some((controller, _)) = key.split_once('.').filter(|_| !key.contains('/')) else {
        bail!("{field}: not a cgroup file name");
    };
    if controller == "cgroup" {
        return Ok("");
    }
    match locate(controller) {
        Some(Place::V2(_)) => Ok(controller),
        Some(Place::V1(_)) => bail!("{field}: the {controller} controller is a v1 hierarchy on this host (cgroups are hybrid here; give the limit in its own linux.resources field)"),
        None => bail!(
            "{field}: this host's v2 hierarchy has no {controller} controller (it offers: {})",
            fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default().trim()
        ),
    }
}

/// The group's folders in [`V1_OWN`]'s hierarchies, where mounted.
pub fn v1_dirs(relative: &Path) -> Vec<PathBuf> {
    V1_OWN
        .iter()
        .filter_map(|c| v1_mount(c))
        .map(|mount| mount.join(relative))
        .collect()
}

/// Makes the group's folders in [`V1_OWN`]'s hierarchies.
pub fn create(relative: &Path) -> Result<()> {
    for controller in V1_OWN {
        let Some(mount) = v1_mount(controller) else {
            continue;
        };
        let mut dir = mount.clone();
        for component in relative.components() {
            let parent = dir.clone();
            dir.push(component);
            match fs::create_dir(&dir) {
                // Made before, or by another container's create at the same moment.
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("create {}", dir.display()))
                }
                _ => {}
            }
            if controller == "cpuset" {
                // v1 leaves a new cpuset empty, and an empty one takes no process; filled
                // whoever made it, as its maker may not have yet.
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let own = fs::read_to_string(dir.join(file)).unwrap_or_default();
                    if own.trim().is_empty() {
                        let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
                        write(&dir.join(file), value.trim())?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes what `resources` asks of these controllers into the group (`relative` below each
/// hierarchy); `enable` lets the group use a v2 controller.
pub fn apply(
    relative: &Path,
    resources: &LinuxResources,
    enable: &dyn Fn(&str) -> Result<()>,
) -> Result<()> {
    check(resources)?;
    let file = |controller: &str, v1: &str, v2: &str| -> Result<PathBuf> {
        match locate(controller) {
            Some(Place::V1(mount)) => Ok(mount.join(relative).join(v1)),
            Some(Place::V2(mount)) => {
                enable(controller)?;
                Ok(mount.join(relative).join(v2))
            }
            None => bail!("no {controller} controller"),
        }
    };
    if let Some(cpu) = resources.cpu() {
        for (field, value) in [("cpus", cpu.cpus()), ("mems", cpu.mems())] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                let name = format!("cpuset.{field}");
                write(&file("cpuset", &name, &name)?, value)
                    .with_context(|| format!("linux.resources.cpu.{field}"))?;
            }
        }
    }
    if let Some(io) = resources.block_io() {
        apply_block_io(relative, io, &file)?;
    }
    for limit in resources.hugepage_limits().iter().flatten() {
        let size = limit.page_size();
        let path = file(
            "hugetlb",
            &format!("hugetlb.{size}.limit_in_bytes"),
            &format!("hugetlb.{size}.max"),
        )?;
        write(&path, &limit.limit().to_string())
            .with_context(|| format!("linux.resources.hugepageLimits[{size}]"))?;
    }
    if let Some(mount) = v2_mount() {
        for (key, value) in resources.unified().iter().flatten() {
            let controller = unified_controller(key)?;
            if !controller.is_empty() {
                enable(controller)?;
            }
            write(&mount.join(relative).join(key), value)
                .with_context(|| format!("linux.resources.unified[{key}]"))?;
        }
    }
    Ok(())
}

fn apply_block_io(
    relative: &Path,
    io: &LinuxBlockIo,
    file: &dyn Fn(&str, &str, &str) -> Result<PathBuf>,
) -> Result<()> {
    let field = "linux.resources.blockIO";
    if let Some(weight) = io.weight().filter(|w| *w > 0) {
        if let Some((place, name)) = weight_file(false) {
            let (path, value) = match place {
                Place::V1(mount) => (mount.join(relative).join(name), weight.to_string()),
                Place::V2(_) => (file("io", "", &name)?, format!("default {weight}")),
            };
            write(&path, &value).with_context(|| format!("{field}.weight"))?;
        }
    }
    for device in io.weight_device().iter().flatten() {
        let (Some(weight), Some((place, name))) = (device.weight(), weight_file(true)) else {
            continue;
        };
        let path = match place {
            Place::V1(mount) => mount.join(relative).join(name),
            Place::V2(_) => file("io", "", &name)?,
        };
        let line = format!("{}:{} {weight}", device.major(), device.minor());
        write(&path, &line).with_context(|| format!("{field}.weightDevice {line:?}"))?;
    }
    for ((v1, v2), devices) in throttles(io) {
        for device in devices {
            let (major, minor, rate) = (device.major(), device.minor(), device.rate());
            let path = file("blkio", &format!("blkio.throttle.{v1}"), "io.max")
                .or_else(|_| file("io", "", "io.max"))?;
            let line = if path.ends_with("io.max") {
                format!("{major}:{minor} {v2}={rate}")
            } else {
                format!("{major}:{minor} {rate}")
            };
            write(&path, &line).with_context(|| format!("{field} throttle {line:?}"))?;
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}
