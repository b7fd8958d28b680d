//! The manager's side of the VM's spawner (`PrivateTmp=`, see [`crate::private_tmp`]): a unit's
//! private folders, asking the spawner for a process in a mount namespace of its own, and
//! handing that process its plan.
//!
//! The spawner's socket reaches the manager from init alone: init hands a duplicate of its end
//! to the service client it runs for the host (`feather service …`), at
//! [`SPAWNER_FD`], and the client to the manager it starts. No path or name leads to it.

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use super::spawn::Prepared;
use crate::private_tmp::{
    self, new_folder_name, private_folder, SpawnAnswer, SpawnRequest, MAX_MESSAGE, SPAWNER_FD,
    TEMPORARY_ROOTS,
};

/// How long the spawner, and then its child, may take to answer.
const ANSWER_TIME: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("PrivateTmp=yes needs the VM's spawner, and this manager was given none (a VM started by a feather without it: restart the VM)")]
    Absent,
    #[error("PrivateTmp=yes needs the VM's spawner, which does not answer ({0}): it has ended (killed?); units with PrivateTmp= can start again once the VM restarts")]
    Gone(String),
    #[error("PrivateTmp=yes: the VM's spawner refused: {0}")]
    Refused(String),
    #[error("PrivateTmp=yes: the process the VM's spawner made did not start its program: {0}")]
    Child(String),
    #[error("PrivateTmp=yes: cannot make {}: {error}", path.display())]
    Folder {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

/// A process the spawner made: not the manager's child, so followed through its pidfd.
pub struct Adopted {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

/// The manager's end of the spawner's socket, if it was given one.
pub struct Spawner {
    socket: Option<OwnedFd>,
    /// The id of the last request.
    asked: u64,
}

impl Spawner {
    /// The socket at [`SPAWNER_FD`], if the manager's starter left one there.
    pub fn inherited() -> Spawner {
        Spawner {
            socket: crate::raw::inherited_spawner_socket(SPAWNER_FD),
            asked: 0,
        }
    }

    /// Whether the manager's starter handed it a spawner's socket at all.
    pub fn is_present(&self) -> bool {
        self.socket.is_some()
    }

    /// A process of `prepared` whose `/tmp` and `/var/tmp` are the unit's `folder`s.
    pub fn spawn(&mut self, folder: &str, prepared: &Prepared) -> Result<Adopted, SpawnerError> {
        let socket = self.socket.as_ref().ok_or(SpawnerError::Absent)?;
        self.asked += 1;
        let request = serde_json::to_vec(&SpawnRequest {
            folder: folder.to_owned(),
            id: self.asked,
        })
        .map_err(|e| SpawnerError::Refused(e.to_string()))?;
        let gone = |e: nix::errno::Errno| SpawnerError::Gone(e.desc().to_owned());
        feather_sys::fdpass::send(socket, &request, &[]).map_err(gone)?;
        // An answer to an earlier request, which came after its wait ended, is dropped with
        // its descriptors (its process, without a plan, ends).
        let (answer, fds) = loop {
            let (answer, fds) = receive(socket).map_err(gone)?;
            let answer: SpawnAnswer = serde_json::from_slice(&answer)
                .map_err(|e| SpawnerError::Gone(format!("its answer: {e}")))?;
            if answer.id() == self.asked {
                break (answer, fds);
            }
        };
        let pid = match answer {
            SpawnAnswer::Started { pid, .. } => Pid::from_raw(pid),
            SpawnAnswer::Refused { why, .. } => return Err(SpawnerError::Refused(why)),
        };
        let [pidfd, channel]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| SpawnerError::Gone("its answer came without the process".into()))?;
        let (plan, fds) = prepared.plan();
        let child = |e: &dyn std::fmt::Display| SpawnerError::Child(e.to_string());
        let plan = serde_json::to_vec(&plan).map_err(|e| child(&e))?;
        feather_sys::fdpass::send(&channel, &plan, &fds).map_err(|e| child(&e))?;
        // The channel ends (closed on exec) once the program runs; else why it did not comes.
        let (reply, _) = receive(&channel).map_err(|e| child(&e))?;
        if !reply.is_empty() {
            return Err(child(&String::from_utf8_lossy(&reply)));
        }
        Ok(Adopted { pid, pidfd })
    }
}

/// One message of `socket`, waited for at most [`ANSWER_TIME`]; an empty one is its end.
fn receive(socket: &impl AsFd) -> nix::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(ANSWER_TIME).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, timeout)? == 0 {
        return Err(nix::errno::Errno::ETIMEDOUT);
    }
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let (length, fds) = feather_sys::fdpass::receive(socket, &mut buffer)?;
    buffer.truncate(length);
    Ok((buffer, fds))
}

/// Makes a unit's private folders, `/tmp/NAME/tmp` and `/var/tmp/NAME/tmp` (NAME 0700, its
/// `tmp` 01777, as systemd makes them), and returns NAME.
pub fn make_folders(unit: &str) -> Result<String, SpawnerError> {
    let mut random = [0u8; 16];
    let read = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    let folder = new_folder_name(unit, random);
    for root in TEMPORARY_ROOTS {
        let tmp = private_folder(root, &folder);
        let outer = tmp
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let made = read
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
            .and_then(|()| {
                // `create`, not `create_all`: the random name must be new.
                fs::DirBuilder::new().mode(0o700).create(&outer)?;
                fs::DirBuilder::new().create(&tmp)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
            });
        if let Err(error) = made {
            remove_folders(&folder);
            return Err(SpawnerError::Folder { path: tmp, error });
        }
    }
    Ok(folder)
}

/// Removes a unit's private folders, once it stopped (as systemd removes them).
pub fn remove_folders(folder: &str) {
    if private_tmp::check_folder_name(folder).is_err() {
        return;
    }
    for root in TEMPORARY_ROOTS {
        // std's remove_dir_all never follows a link it meets.
        let _ = fs::remove_dir_all(std::path::Path::new(root).join(folder));
    }
}
