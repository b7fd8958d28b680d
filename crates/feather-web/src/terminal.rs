//! A terminal into a VM in the page: `feather exec -it VM -- sh` over a WebSocket. The program
//! runs on a terminal of the VM's own devpts (feather_vm::program::launch_with_terminal); its
//! output goes to the page as binary messages, the page's keys come back as binary messages,
//! and a text message `{"cols":…,"rows":…}` resizes it. Closing the page hangs the program up.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use feather_core::{StateRoot, VmName};
use feather_sys::pty::{self, WindowSize};
use feather_vm::workload::Workload;
use serde::Deserialize;
use tokio::sync::mpsc;

/// The VM's login shell: bash where the VM has it, else sh.
const SHELL: &str = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";

#[derive(Deserialize)]
struct Resize {
    cols: u16,
    rows: u16,
}

/// Runs a shell in VM `name` and relays it over `socket` until either side ends.
pub async fn relay(root: StateRoot, name: VmName, mut socket: WebSocket) {
    let workload = Workload {
        argv: vec!["/bin/sh".into(), "-c".into(), SHELL.into()],
        ..Workload::default()
    };
    let started = tokio::task::spawn_blocking(move || {
        feather_vm::program::launch_with_terminal(&root, &name, &workload, "xterm-256color")
    })
    .await;
    let (mut launched, master) = match started {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => return close(socket, &feather_core::error::causes(&e)).await,
        Err(_) => return close(socket, "the terminal's worker failed").await,
    };
    let master: Arc<OwnedFd> = Arc::new(OwnedFd::from(master));
    let (output, mut from_program) = mpsc::channel::<Vec<u8>>(64);
    let reader = Arc::clone(&master);
    std::thread::spawn(move || read_program(&reader, &output));
    let writer = Arc::clone(&master);
    loop {
        tokio::select! {
            chunk = from_program.recv() => match chunk {
                Some(bytes) => {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        break;
                    }
                }
                // The program ended (its terminal hung up): say how.
                None => {
                    let code = tokio::task::spawn_blocking(move || launched.wait()).await;
                    let said = match code {
                        Ok(Ok(code)) => format!("exited with status {code}"),
                        _ => "ended".to_owned(),
                    };
                    return close(socket, &said).await;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(keys))) => {
                    let writer = Arc::clone(&writer);
                    // A full terminal blocks the writer, never the server's threads.
                    let _ = tokio::task::spawn_blocking(move || {
                        std::fs::File::from(writer.try_clone()?).write_all(&keys)
                    })
                    .await;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(size) = serde_json::from_str::<Resize>(text.as_str()) {
                        pty::set_window_size(&*writer, &window(size));
                    }
                }
                Some(Ok(_)) => {}
                // The page went away: dropping the terminal and the program's handle hangs
                // the program up.
                Some(Err(_)) | None => break,
            },
        }
    }
}

/// Copies the program's output to `output` until its terminal hangs up (EIO) or the page's
/// side is gone.
fn read_program(master: &OwnedFd, output: &mpsc::Sender<Vec<u8>>) {
    let Ok(fd) = master.try_clone() else { return };
    let mut terminal = std::fs::File::from(fd);
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(read) = terminal.read(&mut buffer) {
        if read == 0 || output.blocking_send(buffer[..read].to_vec()).is_err() {
            break;
        }
    }
}

fn window(size: Resize) -> WindowSize {
    WindowSize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

async fn close(mut socket: WebSocket, reason: &str) {
    // A close reason is at most 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: reason.into(),
        })))
        .await;
}
