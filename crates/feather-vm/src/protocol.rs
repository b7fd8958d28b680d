//! The keeper's control protocol: one JSON request per line on `control.sock`, one JSON
//! response per line back. Every component reaches a running VM only through this.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    Checkpoint {
        leave_running: bool,
        criu: std::path::PathBuf,
    },
    /// Let a VM received by a migration run: the sender has released it (checkpoint.rs).
    Resume,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Running { init_pid: i32 },
    Stopped { how: String },
    Checkpointed { leave_running: bool },
    Error { message: String },
}

/// Sends one request and waits up to `timeout` for the answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads one request from a connection the keeper accepted.
pub fn read_request(stream: &UnixStream) -> std::io::Result<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub fn write_response(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    stream.write_all(&line)
}
