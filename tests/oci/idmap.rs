//! Id-mapped bind mounts (`idmap`, `ridmap`): files appear owned by the ids the mount's
//! mappings (or the container's user namespace's) give; what cannot be id-mapped is refused by
//! name and leaves nothing.

use std::fs;
use std::os::unix::fs::{chown, MetadataExt};

use serde_json::json;

use crate::support::{base_config, Bundle, Runtime, Scratch};
use crate::userns::chown_tree;

/// A folder with a file of root's and one of uid/gid 2000.
fn owned_files(scratch: &Scratch) -> std::path::PathBuf {
    let data = scratch.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("roots"), "r").unwrap();
    fs::write(data.join("other"), "o").unwrap();
    chown(data.join("other"), Some(2000), Some(2000)).unwrap();
    data
}

#[test]
fn an_idmapped_bind_shows_files_owned_by_the_mapped_ids() {
    let scratch = Scratch::new("idmap");
    let runtime = Runtime::new(&scratch);
    let data = owned_files(&scratch);
    let mut config = base_config(&[
        "sh",
        "-c",
        "stat -c '%n %u %g' /data/roots /data/other /plain/roots",
    ]);
    let map = json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({
        "destination": "/data", "type": "bind", "source": data,
        "options": ["bind", "idmap", "ro"], "uidMappings": map, "gidMappings": map
    }));
    mounts.push(json!({
        "destination": "/plain", "type": "bind", "source": data, "options": ["rbind", "ro"]
    }));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("idmap-{}", std::process::id());
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    // Root's file shows as the host id container id 0 maps to; an id outside the mapping
    // shows as the overflow id; the same files bound without idmap keep their owners.
    assert_eq!(
        outcome.stdout, "/data/roots 1000 1000\n/data/other 65534 65534\n/plain/roots 0 0\n",
        "{outcome:?}"
    );
    let listed = runtime.run(&["list", "-q"]);
    assert_eq!(listed.stdout.trim(), "", "{listed:?}");
}

#[test]
fn idmap_without_mappings_or_on_a_filesystem_mount_is_refused_by_name() {
    let scratch = Scratch::new("idmap-refused");
    let runtime = Runtime::new(&scratch);
    let data = owned_files(&scratch);
    for (mount, says) in [
        (
            json!({"destination": "/data", "type": "bind", "source": data, "options": ["bind", "idmap"]}),
            "give the mount uidMappings and gidMappings",
        ),
        (
            json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["ridmap"]}),
            "only bind mounts are id-mapped",
        ),
    ] {
        let mut config = base_config(&["true"]);
        config["mounts"].as_array_mut().unwrap().push(mount);
        let bundle = Bundle::new(&scratch, "bundle", &config);
        let id = format!("idmap-refused-{}", std::process::id());
        let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
        assert_ne!(outcome.code, 0, "{outcome:?}");
        assert!(
            outcome.stderr.contains("mounts[/data].options idmap") && outcome.stderr.contains(says),
            "{outcome:?}"
        );
        let listed = runtime.run(&["list", "-q"]);
        assert_eq!(listed.stdout.trim(), "", "nothing is left: {listed:?}");
        fs::remove_dir_all(&bundle.dir).unwrap();
    }
}

#[test]
fn idmap_without_own_mappings_takes_the_user_namespaces_so_its_root_owns_roots_files() {
    const HOST_ROOT: u32 = 100_000;
    let scratch = Scratch::new("idmap-userns");
    let runtime = Runtime::new(&scratch);
    let data = owned_files(&scratch);
    let mut config = base_config(&[
        "sh",
        "-c",
        "stat -c '%n %u %g' /data/roots /data/other /plain/roots && touch /data/made",
    ]);
    let map = json!([{"containerID": 0, "hostID": HOST_ROOT, "size": 65536}]);
    config["linux"]["uidMappings"] = map.clone();
    config["linux"]["gidMappings"] = map;
    config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({
        "destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ridmap"]
    }));
    mounts.push(json!({
        "destination": "/plain", "type": "bind", "source": data, "options": ["bind", "ro"]
    }));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    chown_tree(&bundle.dir.join("rootfs"), HOST_ROOT);
    let id = format!("idmap-userns-{}", std::process::id());
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    // Through the id-mapped mount the container sees the files' own owners; bound plainly, the
    // host's root is nobody in the container.
    assert_eq!(
        outcome.stdout, "/data/roots 0 0\n/data/other 2000 2000\n/plain/roots 65534 65534\n",
        "{outcome:?}"
    );
    // What the container's root makes there belongs to the host's root on disk.
    let made = fs::metadata(data.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
}
