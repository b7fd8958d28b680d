//! `feather-open` in a VM and its VM's broker, over `/run/feather/shuttle.sock`
//! (`SOCK_SEQPACKET`, one JSON message a packet, descriptors attached; see [`crate::invoke`]):
//!
//! ```text
//! feather-open                              broker
//!   connect ─────────────────────────────▶
//!   ◀── Answer::Hello { version }
//!   Open { version, app, vm, args, cwd } ─▶  gate, hand-over, start, run
//!   ◀── Answer::Started { vm, argv } + stdin, stdout, stderr
//!   ◀── Answer::Exited { code }
//!   or ◀── Answer::Refused { why } | Answer::Failed { why }
//! ```

use serde::{Deserialize, Serialize};

/// Changes whenever a message of this module changes.
pub const VERSION: u32 = 1;

/// What `feather-open` asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Open {
    /// [`VERSION`] of `feather-open`'s build; a request without one is version 0.
    #[serde(default)]
    pub version: u32,
    pub app: String,
    /// The target VM; without it, the one VM the allowing rule names.
    pub vm: Option<String>,
    pub args: Vec<String>,
    /// The requester's working folder (relative paths are taken from it).
    pub cwd: String,
}

/// What the broker answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Answer {
    /// The broker's build, sent as soon as the connection is accepted.
    Hello {
        version: u32,
    },
    /// The program runs; sent with its stdin (to write), stdout and stderr (to read).
    Started {
        vm: String,
        argv: Vec<String>,
    },
    Exited {
        code: i32,
    },
    /// The policy said no (or the request could not be decided).
    Refused {
        why: String,
    },
    /// Allowed, but it could not be carried out.
    Failed {
        why: String,
    },
}
