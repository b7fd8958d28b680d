//! The path the kubelet takes: containerd 1.6's CRI plugin, with a runtime handler `feather`
//! that maps to containerd's runc shim with `BinaryName` = feather-oci (what a Kubernetes
//! RuntimeClass names; docs/kubernetes.md), driven over containerd's socket by a CRI v1 client,
//! with feather's own feature asked for by a pod annotation the node's annotation policy allows.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    CheckpointContainerRequest, ContainerConfig, ContainerMetadata, ContainerState,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::support::{
    busybox_image_tar_running, run, runtime_allowing, runtime_bin, Containerd, Scratch,
};

/// The sandbox image containerd's config names; the test builds and imports it (no registry).
const SANDBOX_IMAGE: &str = "feather.test/pause:1";
const HANDLER: &str = "feather";

/// The CRI plugin's table: the sandbox image, the `feather` handler beside the default `runc`
/// (a table of runtimes replaces containerd's built-in one, which holds `runc`), no CNI of the host's (the
/// pod uses the node's network), and nothing this machine withholds (lowering oom_score_adj
/// needs CAP_SYS_RESOURCE; AppArmor profiles are not loaded by the test). The handler lets the
/// harmless `org.feather.*` keys through, and `org.feather.base`, which its `BinaryName` (a
/// wrapper passing the node's annotation policy, as docs/kubernetes.md shows) allows.
fn cri_config(scratch: &Scratch, runtime_root: &Path) -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "[{cri}]\n\
         \x20 sandbox_image = \"{SANDBOX_IMAGE}\"\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 disable_apparmor = true\n\
         [{cri}.cni]\n\
         \x20 bin_dir = \"{bin}\"\n\
         \x20 conf_dir = \"{conf}\"\n\
         [{cri}.containerd]\n\
         \x20 snapshotter = \"overlayfs\"\n\
         \x20 default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.{HANDLER}]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         \x20 pod_annotations = [\"org.feather.tags\", \"org.feather.confine\", \"org.feather.base\"]\n\
         [{cri}.containerd.runtimes.{HANDLER}.options]\n\
         \x20 BinaryName = \"{binary}\"\n\
         \x20 Root = \"{root}\"\n\
         \x20 SystemdCgroup = false\n",
        bin = scratch.path("cni-bin").display(),
        conf = scratch.path("cni-conf").display(),
        binary = runtime_allowing(scratch, &["org.feather.base=host"]).display(),
        root = runtime_root.display(),
    )
}

async fn connect(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("containerd's CRI socket answers");
    RuntimeServiceClient::new(channel)
}

/// The node's network (no CNI here): containerd then also leaves the UTS namespace the host's.
fn node_network() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    })
}

fn pod_config(scratch: &Scratch, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "pod".into(),
            uid: "feather-cri-pod".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: scratch.path("pod-logs").display().to_string(),
        // feather's own feature, asked for as a Kubernetes pod would: the host as the base.
        annotations: [("org.feather.base".to_owned(), "host".to_owned())].into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: node_network(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container that says it started and exits 0 on SIGTERM (`wait` returns on a trapped signal).
fn container_config() -> ContainerConfig {
    let script = "trap 'exit 0' TERM; echo started; while :; do sleep 1 & wait $!; done";
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c1".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: SANDBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: "c1.log".into(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: node_network(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The containers feather-oci itself holds under the shim's runtime root.
fn runtime_list(containerd: &Containerd) -> String {
    let listed = run(std::process::Command::new(runtime_bin())
        .arg("--root")
        .arg(containerd.runtime_root())
        .args(["list", "--format", "json"]));
    listed.stdout
}

#[test]
fn cri_pod_and_container_through_the_feather_handler() {
    let scratch = Scratch::new("cri");
    let runtime_root = scratch.path("runtime-root");
    let cgroup_parent = format!("/feather-cri-{}", std::process::id());
    let containerd = Containerd::start_cri(
        &scratch,
        &cri_config(&scratch, &runtime_root),
        &runtime_root,
        &cgroup_parent,
    );
    let tar = busybox_image_tar_running(&scratch, SANDBOX_IMAGE, &["/bin/sleep", "2147483647"]);
    let imported = containerd.ctr(&["images", "import", tar.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{imported:?}");
    std::fs::create_dir_all(scratch.path("pod-logs")).unwrap();

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(lifecycle(&scratch, &containerd, &cgroup_parent));
}

async fn lifecycle(scratch: &Scratch, containerd: &Containerd, cgroup_parent: &str) {
    let mut cri = connect(containerd.address.clone()).await;
    let pod_config = pod_config(scratch, cgroup_parent);
    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: HANDLER.into(),
        })
        .await
        .expect("RunPodSandbox with the feather handler")
        .into_inner()
        .pod_sandbox_id;
    assert!(
        runtime_list(containerd).contains(&format!("\"id\":\"{pod}\"")),
        "feather-oci runs the pod's sandbox container"
    );

    let container = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config()),
            sandbox_config: Some(pod_config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .expect("StartContainer");
    assert!(
        runtime_list(containerd).contains(&format!("\"id\":\"{container}\"")),
        "feather-oci runs the container"
    );

    let exec = cri
        .exec_sync(ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo in; exit 4".into()],
            timeout: 20,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        (
            exec.exit_code,
            String::from_utf8_lossy(&exec.stdout).as_ref()
        ),
        (4, "in\n"),
        "{exec:?}"
    );

    let status = container_status(&mut cri, &container).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);

    // The pod's annotation reached feather-oci: the container sees the host's files, and its
    // writes stay its own.
    let marker = scratch.path("marker");
    std::fs::write(&marker, "host file\n").unwrap();
    let script = format!(
        "cat {m}; echo container > {m}; cat {m}",
        m = marker.display()
    );
    let exec = cri
        .exec_sync(ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script],
            timeout: 20,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        "host file\ncontainer\n",
        "{exec:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host file\n");

    // containerd 1.6's CRI plugin does not implement the kubelet's checkpoint API (1.7 does,
    // through the runtime's checkpoint): the call is answered Unimplemented.
    let checkpoint = cri
        .checkpoint_container(CheckpointContainerRequest {
            container_id: container.clone(),
            location: scratch.path("checkpoint.tar").display().to_string(),
            timeout: 20,
        })
        .await;
    assert_eq!(
        checkpoint.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::Unimplemented),
        "{checkpoint:?}"
    );

    cri.stop_container(StopContainerRequest {
        container_id: container.clone(),
        timeout: 20,
    })
    .await
    .expect("StopContainer");
    let status = container_status(&mut cri, &container).await;
    assert_eq!(
        (status.state, status.exit_code),
        (ContainerState::ContainerExited as i32, 0),
        "SIGTERM reached the container's trap: {status:?}"
    );
    let log = std::fs::read_to_string(scratch.path("pod-logs/c1.log")).unwrap_or_default();
    assert!(log.contains("stdout F started"), "the CRI log: {log:?}");

    cri.remove_container(RemoveContainerRequest {
        container_id: container.clone(),
    })
    .await
    .expect("RemoveContainer");
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");

    let containers = cri
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let pods = cri
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        containers.is_empty() && pods.is_empty(),
        "{containers:?} {pods:?}"
    );
    assert!(
        !runtime_list(containerd).contains("\"id\""),
        "feather-oci holds nothing after: {}",
        runtime_list(containerd)
    );
}

async fn container_status(
    cri: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> k8s_cri::v1::ContainerStatus {
    cri.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("a status")
}
