//! The keeper's control protocol: one JSON request per line on `control.sock`, one JSON
//! response per line back. Every component reaches a running VM only through this. Each
//! request carries the protocol's [`VERSION`]: a keeper started by another build of feather
//! answers a request it might misread with an error naming both versions.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::VmError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the VM up, and who is its init?
    Status,
    /// Stop the VM: SIGTERM to every process, SIGKILL after `grace_secs`.
    Stop { grace_secs: u64 },
    /// Save the VM's processes with CRIU; unless `leave_running`, they end once saved.
    /// `criu`: the CRIU the asker found and checked (the keeper's own environment, from when the
    /// VM started, may name another).
    /// `lazy`: post-copy, the VM's memory is kept back and served once the rest is dumped; the
    /// keeper answers [`Response::Dumped`], passing with it the connection to CRIU's page
    /// server (one end of a socket pair, the other CRIU's: nothing listens), once that server
    /// is about to serve it (its `status-ready`: the images are written and the keeper took
    /// them), and the final answer once every page was fetched (or the fetching failed: then
    /// the keeper holds the VM as CRIU left it, frozen, until the asker shuts its side down or
    /// ends, and answers [`Response::Thawed`] if it let the VM run on here, or an error if a
    /// release record had it end the VM's processes here).
    /// `hold_frozen` (with `leave_running`): the VM is frozen before the dump and stays frozen
    /// after the answer, until the asker closes its end of the connection (it has copied the
    /// VM's layers, or it died) or the keeper's limit passes; then [`Response::Thawed`].
    Checkpoint {
        leave_running: bool,
        criu: std::path::PathBuf,
        // On the wire `post_copy`: version 4's `lazy` was an object or null, and a keeper of
        // that version, which defaults a missing `lazy`, reads a version 5 request this far
        // and refuses it for its version, not as garbled.
        #[serde(default, rename = "post_copy")]
        lazy: bool,
        #[serde(default)]
        hold_frozen: bool,
    },
    /// Let a VM received by a migration run: the sender has released it (checkpoint.rs).
    Resume,
    /// Take a pooled VM out of the pool (`crate::pool`) for one `run --rm`: the keeper answers
    /// [`Response::Claimed`] to the first asker only, and ends and removes the VM once that
    /// asker lets go: it shuts its side of the connection (its command ended; the keeper
    /// answers [`Response::Stopped`] once the VM is set aside) or dies. A variant older keepers
    /// never receive (their pool entries read as stale), so the version stays. `terminal`: the
    /// claimer's, where the VM's `ask` rules ask from then on (a fill starts VMs with none).
    Claim {
        #[serde(default)]
        terminal: Option<std::path::PathBuf>,
    },
}

/// Changes whenever a message of this module changes.
pub const VERSION: u32 = 5;

/// A request as it travels: with the asker's protocol version.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(default)]
    version: u32,
    #[serde(flatten)]
    request: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Running {
        init_pid: i32,
        /// The keeper ends a post-copy source copy once a release record (`<vm>/released-to`)
        /// says it was let go, never thaws it (`keeper::settle_source_copy`). Absent from the
        /// answer of a keeper of an older build, which looked for the record in the checkpoint
        /// folder, where `migrate` no longer writes it: `migrate` refuses post-copy with such
        /// a keeper. A field older parties skip, so the protocol's version stays: a new version
        /// would have cut every running VM of an older build off, `stop` included.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ends_released_copy: bool,
    },
    Stopped {
        how: String,
        /// What ending the VM's hand-overs did in other VMs (processes ended there, or what
        /// still holds one): one sentence each (`crate::handed_over`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        handed_over: Vec<String>,
    },
    Checkpointed {
        leave_running: bool,
    },
    /// A lazy dump's images are written and its page server serves the memory from now on,
    /// on the connection passed with this answer ([`Conversation::passed`]).
    Dumped,
    /// A checkpoint's freeze (`hold_frozen`, or a failed post-copy dump's) is over: the VM ran
    /// not at all for `frozen_ms`.
    Thawed {
        frozen_ms: u64,
    },
    /// The VM is this asker's until its connection closes.
    Claimed,
    Error {
        message: String,
    },
}

/// Sends one request and waits up to `timeout` for the answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    Conversation::start(socket, request, timeout)?.answer()
}

/// What the asker makes of a keeper's answer about VM `vm`: `take` turns the answers it
/// expects into its result and hands any other back. The keeper's own error is
/// [`VmError::Keeper`], named after the VM where the keeper did not (a keeper of another
/// build refuses the request's version without reading which VM it is about); any other answer
/// is [`VmError::KeeperAnswer`], none [`VmError::KeeperSilent`].
pub(crate) fn expect<T>(
    answer: std::io::Result<Response>,
    vm: impl std::fmt::Display,
    take: impl FnOnce(Response) -> Result<T, Response>,
) -> crate::error::Result<T> {
    match answer.map(take) {
        Ok(Ok(taken)) => Ok(taken),
        Ok(Err(Response::Error { message })) => Err(VmError::Keeper(named(message, vm))),
        Ok(Err(other)) => Err(VmError::KeeperAnswer {
            vm: vm.to_string(),
            answer: format!("{other:?}"),
        }),
        Err(source) => Err(silent(&vm, source)),
    }
}

/// A keeper's `message`, beginning with the VM it is about.
fn named(message: String, vm: impl std::fmt::Display) -> String {
    let name = format!("VM {vm}");
    if message.starts_with(&name) {
        message
    } else {
        format!("{name}: {message}")
    }
}

/// The keeper of VM `vm` did not answer: `source` says why.
pub(crate) fn silent(vm: impl std::fmt::Display, source: std::io::Error) -> VmError {
    VmError::KeeperSilent {
        vm: vm.to_string(),
        source,
    }
}

/// A request whose keeper answers more than once (a lazy checkpoint: [`Response::Dumped`],
/// then how it ended).
pub struct Conversation {
    reader: BufReader<Received>,
}

/// The asker's end of a connection to the keeper, which keeps the descriptors the keeper
/// passes with an answer (a plain read would close them).
struct Received {
    stream: UnixStream,
    passed: Vec<OwnedFd>,
}

impl Read for Received {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let (read, passed) = feather_sys::fdpass::receive(&self.stream, buffer)?;
        self.passed.extend(passed);
        Ok(read)
    }
}

impl Conversation {
    pub fn start(
        socket: &Path,
        request: &Request,
        timeout: Duration,
    ) -> std::io::Result<Conversation> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        let envelope = Envelope {
            version: VERSION,
            request: request.clone(),
        };
        let mut line = serde_json::to_vec(&envelope)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        Ok(Conversation {
            reader: BufReader::new(Received {
                stream,
                passed: Vec::new(),
            }),
        })
    }

    /// Tells the keeper this side has nothing more to say (a held checkpoint: the layers are
    /// copied); its answers can still be read.
    pub fn done_sending(&self) -> std::io::Result<()> {
        self.reader
            .get_ref()
            .stream
            .shutdown(std::net::Shutdown::Write)
    }

    /// Waits up to `patience` for each of the keeper's answers from now on.
    pub fn wait_at_most(&self, patience: Duration) -> std::io::Result<()> {
        self.reader
            .get_ref()
            .stream
            .set_read_timeout(Some(patience))
    }

    /// Waits for the keeper's answers as long as they take (a post-copy dump's last answer
    /// comes once the receiver has fetched every page, however long a big VM over a slow link
    /// takes); the keeper's end still ends the wait.
    pub fn wait_without_limit(&self) -> std::io::Result<()> {
        self.reader.get_ref().stream.set_read_timeout(None)
    }

    /// The descriptor the keeper passed with its answers so far (with [`Response::Dumped`]:
    /// the connection to CRIU's page server), taken.
    pub fn passed(&mut self) -> Option<OwnedFd> {
        self.reader.get_mut().passed.pop()
    }

    /// Whether an answer (or the keeper's end) waits to be read now, without waiting for one.
    pub fn answer_waiting(&self) -> std::io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        if !self.reader.buffer().is_empty() {
            return Ok(true);
        }
        let mut fds = [PollFd::new(
            self.reader.get_ref().stream.as_fd(),
            PollFlags::POLLIN,
        )];
        Ok(poll(&mut fds, PollTimeout::ZERO)? > 0)
    }

    /// The keeper's next answer.
    pub fn answer(&mut self) -> std::io::Result<Response> {
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the keeper ended without answering",
            ));
        }
        serde_json::from_str(&answer)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// A request the keeper could not take.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading the request")]
    Io(#[from] std::io::Error),
    #[error("a garbled request")]
    Garbled(#[from] serde_json::Error),
    #[error("control protocol version {received}, where this keeper speaks {expected} (the VM was started by another build of feather: stop it with that build, or install feather and feather-keeper from one build and restart the VM)")]
    Version { expected: u32, received: u32 },
}

/// Reads one request from a connection the keeper accepted.
pub fn read_request(stream: &UnixStream) -> Result<Request, RequestError> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    // The version first: a request of another version may not parse as one of this version.
    let version: Versioned = serde_json::from_str(&line)?;
    if version.version != VERSION {
        return Err(RequestError::Version {
            expected: VERSION,
            received: version.version,
        });
    }
    let envelope: Envelope = serde_json::from_str(&line)?;
    Ok(envelope.request)
}

/// A request's version alone, whatever the rest of it holds.
#[derive(Deserialize)]
struct Versioned {
    #[serde(default)]
    version: u32,
}

pub fn write_response(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    stream.write_all(&line_of(response)?)
}

/// Writes `response` with `passed`, a descriptor the asker takes ([`Conversation::passed`]).
pub fn write_response_passing(
    stream: &UnixStream,
    response: &Response,
    passed: BorrowedFd,
) -> std::io::Result<()> {
    let line = line_of(response)?;
    feather_sys::fdpass::send(stream, &line, &[passed.as_raw_fd()])?;
    Ok(())
}

fn line_of(response: &Response) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the asker takes passes; the keeper's own error stands as it said it (it names the
    /// VM); any other answer, and none, name the VM.
    #[test]
    fn an_answer_the_asker_does_not_take_names_the_vm() {
        let take = |response| match response {
            Response::Thawed { frozen_ms } => Ok(frozen_ms),
            other => Err(other),
        };
        assert_eq!(
            expect(Ok(Response::Thawed { frozen_ms: 7 }), "vm", take).unwrap(),
            7
        );
        let said = Response::Error {
            message: "VM vm: cannot".into(),
        };
        assert_eq!(
            expect(Ok(said), "vm", take).unwrap_err().to_string(),
            "VM vm: cannot"
        );
        let unnamed = Response::Error {
            message: "bad request: control protocol version 4, this keeper speaks 5".into(),
        };
        assert_eq!(
            expect(Ok(unnamed), "vm", take).unwrap_err().to_string(),
            "VM vm: bad request: control protocol version 4, this keeper speaks 5"
        );
        assert_eq!(
            expect(Ok(Response::Dumped), "vm", take)
                .unwrap_err()
                .to_string(),
            "VM vm: unexpected answer from its keeper: Dumped"
        );
        let silent = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "ended");
        assert_eq!(
            expect(Err(silent), "vm", take).unwrap_err().to_string(),
            "VM vm: its keeper did not answer"
        );
    }

    #[test]
    fn a_request_of_another_version_is_refused_naming_both() {
        let (asker, keeper) = UnixStream::pair().unwrap();
        (&asker)
            .write_all(b"{\"version\":7,\"op\":\"status\"}\n")
            .unwrap();
        let error = read_request(&keeper).unwrap_err().to_string();
        assert!(
            error.contains(&format!("version 7, where this keeper speaks {VERSION}")),
            "{error}"
        );
        (&asker).write_all(b"{\"op\":\"status\"}\n").unwrap();
        assert!(
            read_request(&keeper).is_err(),
            "a request without a version"
        );
    }

    /// A keeper of an older build answers its status without `ends_released_copy`: read as
    /// false (`migrate` refuses post-copy then); this build's says it, and an older reader,
    /// which knows only `init_pid`, skips it.
    #[test]
    fn a_status_answer_says_whether_the_keeper_ends_a_released_copy() {
        let older: Response = serde_json::from_str(r#"{"result":"running","init_pid":7}"#).unwrap();
        assert_eq!(
            older,
            Response::Running {
                init_pid: 7,
                ends_released_copy: false
            }
        );
        let this = serde_json::to_string(&Response::Running {
            init_pid: 7,
            ends_released_copy: true,
        })
        .unwrap();
        assert_eq!(
            this,
            r#"{"result":"running","init_pid":7,"ends_released_copy":true}"#
        );
        #[derive(serde::Deserialize)]
        #[serde(tag = "result", rename_all = "snake_case")]
        enum Older {
            Running { init_pid: i32 },
        }
        let Older::Running { init_pid } = serde_json::from_str(&this).unwrap();
        assert_eq!(init_pid, 7);
    }

    /// A version 4 checkpoint (its `lazy` an object or null, which version 5's bool cannot
    /// parse) is refused for its version, not as garbled.
    #[test]
    fn a_version_4_checkpoint_is_refused_for_its_version() {
        let (asker, keeper) = UnixStream::pair().unwrap();
        (&asker)
            .write_all(
                b"{\"version\":4,\"op\":\"checkpoint\",\"leave_running\":false,\"criu\":\"/usr/sbin/criu\",\"lazy\":null,\"hold_frozen\":false}\n",
            )
            .unwrap();
        let error = read_request(&keeper).unwrap_err().to_string();
        assert!(
            error.contains(&format!("version 4, where this keeper speaks {VERSION}")),
            "{error}"
        );
    }

    /// A version 5 checkpoint carries none of version 4's fields with another meaning: a
    /// version 4 keeper (which defaults a missing `lazy`) reaches its version refusal.
    #[test]
    fn a_checkpoint_names_post_copy_not_version_4_s_lazy() {
        let line = serde_json::to_value(Envelope {
            version: VERSION,
            request: Request::Checkpoint {
                leave_running: false,
                criu: "/usr/sbin/criu".into(),
                lazy: true,
                hold_frozen: false,
            },
        })
        .unwrap();
        assert_eq!(line["post_copy"], serde_json::Value::Bool(true));
        assert!(line.get("lazy").is_none(), "{line}");
    }

    #[test]
    fn a_request_of_this_version_is_read() {
        let (asker, keeper) = UnixStream::pair().unwrap();
        let envelope = Envelope {
            version: VERSION,
            request: Request::Stop { grace_secs: 3 },
        };
        let mut line = serde_json::to_vec(&envelope).unwrap();
        line.push(b'\n');
        (&asker).write_all(&line).unwrap();
        assert_eq!(
            read_request(&keeper).unwrap(),
            Request::Stop { grace_secs: 3 }
        );
    }
}
