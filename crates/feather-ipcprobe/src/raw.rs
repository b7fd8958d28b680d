//! Every `unsafe` call of the probe: System V IPC, keyrings and the kernel calls nix does not
//! wrap. Each is the smallest safe function over one system call; errors come back as Errno.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// shmget(2): the id of the segment `key` (created with `create`).
pub fn shmget(key: i32, size: usize, create: bool) -> Result<i32, Errno> {
    let flags = if create {
        libc::IPC_CREAT | libc::IPC_EXCL | 0o666
    } else {
        0
    };
    // SAFETY: plain integers.
    check(unsafe { libc::shmget(key, size, flags) } as libc::c_long).map(|id| id as i32)
}

/// Writes `data` at the start of segment `id` (attach, copy, detach).
pub fn shm_write(id: i32, data: &[u8]) -> Result<(), Errno> {
    // SAFETY: shmat maps the segment at an address the kernel chooses, or returns -1.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(Errno::last());
    }
    // SAFETY: the segment was created with at least data.len() bytes (the probe makes 4096
    // and writes fewer); `addr` is the start of our own mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len().min(4096));
        libc::shmdt(addr);
    }
    Ok(())
}

/// Reads up to `len` bytes from the start of segment `id`.
pub fn shm_read(id: i32, len: usize) -> Result<Vec<u8>, Errno> {
    // SAFETY: as in shm_write, read-only.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if addr as isize == -1 {
        return Err(Errno::last());
    }
    let mut out = vec![0u8; len.min(4096)];
    // SAFETY: every segment the probe reads was made with 4096 bytes or more by its listener;
    // a segment of another owner that is smaller would fault, so the caller checks the size
    // with IPC_STAT first (shm_size).
    unsafe {
        std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len());
        libc::shmdt(addr);
    }
    Ok(out)
}

pub fn shm_size(id: i32) -> Result<usize, Errno> {
    // SAFETY: shmid_ds is plain old data; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is valid and exclusively borrowed for the call.
    check(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } as libc::c_long)?;
    Ok(ds.shm_segsz)
}

pub fn shm_remove(id: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

pub fn semget(key: i32, create: bool) -> Result<i32, Errno> {
    let flags = if create {
        libc::IPC_CREAT | libc::IPC_EXCL | 0o666
    } else {
        0
    };
    // SAFETY: plain integers.
    check(unsafe { libc::semget(key, 1, flags) } as libc::c_long).map(|id| id as i32)
}

pub fn sem_set(id: i32, value: i32) -> Result<(), Errno> {
    // SAFETY: SETVAL takes an int as its fourth (variadic) argument.
    check(unsafe { libc::semctl(id, 0, libc::SETVAL, value) } as libc::c_long).map(drop)
}

pub fn sem_get(id: i32) -> Result<i32, Errno> {
    // SAFETY: GETVAL takes no fourth argument.
    check(unsafe { libc::semctl(id, 0, libc::GETVAL) } as libc::c_long).map(|v| v as i32)
}

pub fn sem_remove(id: i32) {
    // SAFETY: IPC_RMID takes no fourth argument.
    unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
}

pub fn msgget(key: i32, create: bool) -> Result<i32, Errno> {
    let flags = if create {
        libc::IPC_CREAT | libc::IPC_EXCL | 0o666
    } else {
        0
    };
    // SAFETY: plain integers.
    check(unsafe { libc::msgget(key, flags) } as libc::c_long).map(|id| id as i32)
}

#[repr(C)]
struct Message {
    mtype: libc::c_long,
    text: [u8; 64],
}

pub fn msg_send(id: i32, data: &[u8]) -> Result<(), Errno> {
    let mut message = Message {
        mtype: 1,
        text: [0; 64],
    };
    let n = data.len().min(64);
    message.text[..n].copy_from_slice(&data[..n]);
    // SAFETY: `message` is a valid msgbuf with 64 bytes of text.
    check(unsafe {
        libc::msgsnd(
            id,
            &message as *const Message as *const libc::c_void,
            64,
            libc::IPC_NOWAIT,
        )
    } as libc::c_long)
    .map(drop)
}

/// Reads one message without removing it (MSG_COPY needs a kernel with checkpoint support,
/// so the probe receives and sends it back).
pub fn msg_receive(id: i32) -> Result<Vec<u8>, Errno> {
    let mut message = Message {
        mtype: 0,
        text: [0; 64],
    };
    // SAFETY: `message` has room for 64 bytes of text, as passed.
    let n = check(unsafe {
        libc::msgrcv(
            id,
            &mut message as *mut Message as *mut libc::c_void,
            64,
            0,
            libc::IPC_NOWAIT,
        )
    } as libc::c_long)?;
    let text = message.text[..n as usize].to_vec();
    let _ = msg_send(id, &text);
    Ok(text)
}

pub fn msg_remove(id: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

pub const KEY_SPEC_SESSION_KEYRING: i32 = -3;
pub const KEY_SPEC_USER_KEYRING: i32 = -4;
const KEYCTL_READ: libc::c_long = 11;
const KEYCTL_SEARCH: libc::c_long = 10;
const KEYCTL_INVALIDATE: libc::c_long = 21;

fn cstring(text: &str) -> CString {
    CString::new(text.replace('\0', "")).unwrap_or_default()
}

/// add_key("user", description, payload, keyring): the new key's serial.
pub fn add_user_key(description: &str, payload: &[u8], keyring: i32) -> Result<i32, Errno> {
    let kind = cstring("user");
    let description = cstring(description);
    // SAFETY: NUL-terminated strings and a payload pointer with its length, all live across
    // the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            description.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            keyring,
        )
    })
    .map(|id| id as i32)
}

/// keyctl(KEYCTL_SEARCH) in `keyring` for a "user" key, then KEYCTL_READ of its payload.
pub fn search_user_key(description: &str, keyring: i32) -> Result<Vec<u8>, Errno> {
    let kind = cstring("user");
    let description = cstring(description);
    // SAFETY: NUL-terminated strings live across the call; destination keyring 0 (none).
    let id = check(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_SEARCH,
            keyring,
            kind.as_ptr(),
            description.as_ptr(),
            0,
        )
    })?;
    let mut buffer = vec![0u8; 128];
    // SAFETY: the buffer is valid for its length, which is passed.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            id,
            buffer.as_mut_ptr(),
            buffer.len(),
        )
    })?;
    buffer.truncate((n as usize).min(128));
    Ok(buffer)
}

pub fn invalidate_key(id: i32) {
    // SAFETY: plain integers.
    unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id) };
}

/// ioctl(fd, request, &byte): TIOCSTI takes a pointer to the character to push; TIOCLINUX a
/// pointer to its subcommand byte.
pub fn tty_ioctl(fd: RawFd, request: u64, byte: u8) -> Result<(), Errno> {
    let value = byte;
    // SAFETY: both requests read one byte through the pointer, which is valid.
    check(unsafe { libc::ioctl(fd, request as _, &value as *const u8) } as libc::c_long).map(drop)
}

/// kexec_load(0, 0, NULL, 0): would replace the kernel with nothing; the kernel refuses
/// before loading anything unless the caller is privileged.
pub fn kexec_load_nothing() -> Result<(), Errno> {
    // SAFETY: zero segments and a null segment list.
    check(unsafe { libc::syscall(libc::SYS_kexec_load, 0, 0, std::ptr::null::<u8>(), 0) }).map(drop)
}

/// bpf(BPF_MAP_CREATE) of a one-entry array map; returns the map's descriptor.
pub fn bpf_map_create() -> Result<OwnedFd, Errno> {
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key size
    attr[2] = 4; // value size
    attr[3] = 1; // max entries
                 // SAFETY: `attr` is a zero-padded bpf_attr for BPF_MAP_CREATE, with its size passed.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    })?;
    // SAFETY: a new descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// perf_event_open of a software cpu-clock counter on the caller itself.
pub fn perf_event_open_self() -> Result<OwnedFd, Errno> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
                                                       // config 0 = PERF_COUNT_SW_CPU_CLOCK; the flags word at offset 40: disabled, exclude_kernel,
                                                       // exclude_hv, so that even perf_event_paranoid=2 allows it.
    let flags: u64 = 1 | (1 << 5) | (1 << 6);
    attr[40..48].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: `attr` is a zero-padded perf_event_attr of the size it declares.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0) })?;
    // SAFETY: a new descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn userfaultfd() -> Result<OwnedFd, Errno> {
    // SAFETY: plain flags.
    let fd = check(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) })?;
    // SAFETY: a new descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// io_uring_setup(2) of a one-entry ring: the kernel's asynchronous call interface.
pub fn io_uring_setup() -> Result<OwnedFd, Errno> {
    // struct io_uring_params: 120 bytes, all zero asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: `params` is a zeroed io_uring_params the kernel may write its answer into.
    let fd = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) })?;
    // SAFETY: a new descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// openpty(3): a new terminal pair (master, slave) on the caller's devpts.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), Errno> {
    let pty = nix::pty::openpty(None, None)?;
    Ok((pty.master, pty.slave))
}

/// Takes ownership of a descriptor the kernel just returned (accept).
pub fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor they just received and own alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY): under Yama's restricted ptrace, lets any process
/// of the same user trace the caller. Without Yama the call fails harmlessly.
pub fn allow_any_ptracer() {
    // SAFETY: plain integers.
    unsafe { libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0) };
}
