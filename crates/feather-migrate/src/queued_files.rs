//! The files a checkpoint keeps in flight: a message queued on a unix socket carries
//! descriptors (`SCM_RIGHTS`), which CRIU opens in a task and sends into the restored queue,
//! then closes before the tree is resumed. No check of the restored tree sees them (no task's
//! descriptor table holds one until a task receives the message, after the thaw), so they are
//! judged here, from the images, before CRIU runs: one on a proc or sysfs mount is refused
//! whatever its path. It is opened on the mount CRIU restores, which may be unmasked beneath a
//! place the restore masks only afterwards, or writable where the dump left a kernel path so
//! (`/proc/sys/kernel/core_pattern` opened for writing on a proc whose `/proc/sys` bind the
//! dump lacked: such a restore is refused after CRIU, this is a first layer).

use std::collections::BTreeSet;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use crate::image_frame::{check_magics, FILES_MAGIC, HEAD, REG_FILES_MAGIC, SK_QUEUES_MAGIC};

/// The most one entry of `sk-queues.img` or `files.img` may be: a packet's entry lists at most
/// `SCM_MAX_FD` (253) descriptors, a file's a path of at most `PATH_MAX` and a few numbers.
/// A longer one is refused, not read into memory.
const MAX_ENTRY: usize = 1 << 20;

/// CRIU's `FD_TYPES__REG` (images/fdinfo.proto): a file opened by its path.
const FD_TYPE_REG: i32 = 1;

/// The other file types (images/fdinfo.proto) a queued id may have: CRIU makes each anew,
/// opening no path (`PIPE` 2, `INETSK` 4, `UNIXSK` 5, `EVENTFD` 6, `SIGNALFD` 9, `PACKETSK`
/// 10, `NETLINKSK` 13, `TIMERFD` 17, `MEMFD` 18). Any other is refused (review fixrestore30
/// H1): a `FIFO` or a `TTY` opens the path of the REG entry its `regf_id` names, with its own
/// flags, and a type unknown here may open one too.
const PATHLESS_TYPES: [i32; 9] = [2, 4, 5, 6, 9, 10, 13, 17, 18];

/// The most descriptors one control message carries (the kernel's `SCM_MAX_FD`), and the most
/// a whole queue image may: more is no queue a kernel made, and is refused, not collected
/// (review fixrestore30 M4).
const MAX_RIGHTS_PER_MESSAGE: usize = 253;
const MAX_RIGHTS: usize = 1 << 16;

/// CRIU's `scm_entry` (images/sk-packet.proto): the descriptors one control message carries,
/// each by its file id.
#[derive(Clone, PartialEq, prost::Message)]
struct ScmEntry {
    #[prost(uint32, optional, tag = "1")]
    kind: Option<u32>,
    #[prost(uint32, repeated, tag = "2")]
    rights: Vec<u32>,
}

/// CRIU's `sk_packet_entry`: one queued message, whose `length` bytes of data follow the entry
/// in the image.
#[derive(Clone, PartialEq, prost::Message)]
struct SkPacketEntry {
    #[prost(uint32, optional, tag = "1")]
    id_for: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    length: Option<u32>,
    #[prost(message, repeated, tag = "4")]
    scm: Vec<ScmEntry>,
}

/// CRIU's `reg_file_entry` (images/regfile.proto), the fields judged: the file's path in its
/// mount namespace (bytes: a name need not be UTF-8) and its mount.
#[derive(Clone, PartialEq, prost::Message)]
struct RegFileEntry {
    #[prost(uint32, optional, tag = "1")]
    id: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "6")]
    name: Option<Vec<u8>>,
    #[prost(sint32, optional, tag = "7")]
    mnt_id: Option<i32>,
}

/// CRIU's `file_entry` (images/fdinfo.proto), in `files.img`: a file of any type, by its id.
#[derive(Clone, PartialEq, prost::Message)]
struct FileEntry {
    #[prost(int32, optional, tag = "1")]
    kind: Option<i32>,
    #[prost(uint32, optional, tag = "2")]
    id: Option<u32>,
    #[prost(message, optional, tag = "3")]
    reg: Option<RegFileEntry>,
}

/// A queued file opened by its path, as the images name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueuedFile {
    /// The file's id in the images.
    pub id: u32,
    /// Its path in its mount namespace.
    pub path: String,
    /// Its mount's `mnt_id`, if the images give one.
    pub mnt_id: Option<u32>,
}

/// Every file opened by its path that a message queued in the images carries: the ids in
/// `sk-queues.img`'s control messages, looked up in `files.img` (and in `reg-files.img`, the
/// older images' spelling, which CRIU still reads). A file of a pathless type (a pipe, a
/// socket, a memfd: [`PATHLESS_TYPES`]) has no path and no mount, and is not listed. Fails
/// closed: a queued id of any other type, or found in no image, is an error naming it.
pub(crate) fn queued_files(images: &Path) -> std::io::Result<Vec<QueuedFile>> {
    let queued = queued_ids(images)?;
    if queued.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let mut pathless = BTreeSet::new();
    let mut other = None;
    let mut keep = |reg: RegFileEntry| {
        if let Some(id) = reg.id.filter(|id| queued.contains(id)) {
            found.push(QueuedFile {
                id,
                path: String::from_utf8_lossy(&reg.name.unwrap_or_default()).into_owned(),
                mnt_id: reg.mnt_id.and_then(|id| u32::try_from(id).ok()),
            });
        }
    };
    for_each_entry(&images.join("files.img"), FILES_MAGIC, |body| {
        let file: FileEntry = decode(body)?;
        match (file.kind, file.id.filter(|id| queued.contains(id))) {
            (Some(FD_TYPE_REG), _) => keep(file.reg.unwrap_or_default()),
            (Some(kind), Some(id)) if PATHLESS_TYPES.contains(&kind) => _ = pathless.insert(id),
            (kind, Some(id)) => _ = other.get_or_insert((id, kind)),
            (_, None) => {}
        }
        Ok(0)
    })?;
    for_each_entry(&images.join("reg-files.img"), REG_FILES_MAGIC, |body| {
        keep(decode(body)?);
        Ok(0)
    })?;
    let judged = |id: &u32| pathless.contains(id) || found.iter().any(|f| f.id == *id);
    match (other, queued.iter().find(|id| !judged(id))) {
        (Some((id, kind)), _) => Err(unjudged(images, id, &format!("of type {kind:?}"))),
        (None, Some(id)) => Err(unjudged(images, *id, "found in no image")),
        (None, None) => Ok(found),
    }
}

/// The error for a queued file id `id` the reader cannot judge (`what` it is).
fn unjudged(images: &Path, id: u32, what: &str) -> std::io::Error {
    std::io::Error::new(
        ErrorKind::InvalidData,
        format!(
            "{}: a message queued on a unix socket carries file id {id}, {what}: only files \
             opened by a path the restore judges, or made anew without one (a pipe, a socket, \
             an eventfd, a memfd), may be queued; take the checkpoint again once no process \
             has such a file in flight",
            images.join("sk-queues.img").display()
        ),
    )
}

/// The file ids every queued message's control messages carry.
fn queued_ids(images: &Path) -> std::io::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for_each_entry(&images.join("sk-queues.img"), SK_QUEUES_MAGIC, |body| {
        let packet: SkPacketEntry = decode(body)?;
        let rights: usize = packet.scm.iter().map(|scm| scm.rights.len()).sum();
        if rights > MAX_RIGHTS_PER_MESSAGE {
            return Err(format!(
                "a message carrying {rights} descriptors, more than the kernel's \
                 {MAX_RIGHTS_PER_MESSAGE}"
            ));
        }
        ids.extend(packet.scm.iter().flat_map(|scm| scm.rights.iter().copied()));
        if ids.len() > MAX_RIGHTS {
            return Err(format!("more than {MAX_RIGHTS} queued descriptors"));
        }
        Ok(u64::from(packet.length.unwrap_or_default()))
    })?;
    Ok(ids)
}

fn decode<M: prost::Message + Default>(body: &[u8]) -> Result<M, String> {
    M::decode(body).map_err(|e| e.to_string())
}

/// Reads the image at `path` entry by entry (two magic words, checked to be an image of kind
/// `magic`, then each entry's little-endian u32 length and body), without reading it whole:
/// `entry` is given each body and says how many bytes of data follow it. A missing image has
/// no entries.
fn for_each_entry(
    path: &Path,
    magic: u32,
    mut entry: impl FnMut(&[u8]) -> Result<u64, String>,
) -> std::io::Result<()> {
    let invalid = |why: String| {
        std::io::Error::new(ErrorKind::InvalidData, format!("{}: {why}", path.display()))
    };
    let file = match feather_core::small_file::open(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        opened => opened.map_err(|e| invalid(e.to_string()))?,
    };
    let mut reader = BufReader::new(file);
    let mut head = [0u8; HEAD];
    reader
        .read_exact(&mut head)
        .map_err(|_| invalid("shorter than its magic words".into()))?;
    check_magics(&head, magic).map_err(invalid)?;
    while let Some(size) = entry_size(&mut reader).map_err(|e| invalid(e.to_string()))? {
        if size > MAX_ENTRY {
            return Err(invalid(format!(
                "an entry of {size} bytes, more than the {} KiB any entry of CRIU's is",
                MAX_ENTRY >> 10
            )));
        }
        let mut body = vec![0u8; size];
        reader
            .read_exact(&mut body)
            .map_err(|_| invalid("an entry cut short".into()))?;
        let data = entry(&body).map_err(invalid)?;
        let skipped = std::io::copy(&mut (&mut reader).take(data), &mut std::io::sink())?;
        if skipped != data {
            return Err(invalid("an entry's data cut short".into()));
        }
    }
    Ok(())
}

/// The next entry's length, or None at the image's end.
fn entry_size(reader: &mut impl Read) -> std::io::Result<Option<usize>> {
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size) {
        Ok(()) => Ok(Some(u32::from_le_bytes(size) as usize)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost::Message;
    use std::fs;

    /// An image of kind `magic` of `entries`, each followed by its data.
    pub(crate) fn image(magic: u32, entries: &[(Vec<u8>, &[u8])]) -> Vec<u8> {
        let mut out = crate::image_frame::tests::head(magic);
        for (body, data) in entries {
            out.extend((body.len() as u32).to_le_bytes());
            out.extend(body);
            out.extend(*data);
        }
        out
    }

    /// Writes into `dir` a queue with one message carrying file `id` and `other` (a pipe), and
    /// a `files.img` giving `id` the path `path` on mount `mnt_id`.
    pub(crate) fn queue_file(dir: &Path, id: u32, path: &str, mnt_id: i32) {
        let packet = SkPacketEntry {
            id_for: Some(9),
            length: Some(5),
            scm: vec![ScmEntry {
                kind: Some(1),
                rights: vec![id, id + 1],
            }],
        };
        let unqueued = SkPacketEntry {
            id_for: Some(9),
            length: Some(3),
            scm: Vec::new(),
        };
        fs::write(
            dir.join("sk-queues.img"),
            image(
                SK_QUEUES_MAGIC,
                &[
                    (unqueued.encode_to_vec(), b"abc"),
                    (packet.encode_to_vec(), b"hello"),
                ],
            ),
        )
        .unwrap();
        let reg = |id: u32, path: &str| RegFileEntry {
            id: Some(id),
            name: Some(path.as_bytes().to_vec()),
            mnt_id: Some(mnt_id),
        };
        let files = [
            FileEntry {
                kind: Some(FD_TYPE_REG),
                id: Some(id),
                reg: Some(reg(id, path)),
            },
            FileEntry {
                kind: Some(2),
                id: Some(id + 1),
                reg: None,
            },
            FileEntry {
                kind: Some(FD_TYPE_REG),
                id: Some(id + 2),
                reg: Some(reg(id + 2, "/unqueued")),
            },
        ];
        let entries: Vec<(Vec<u8>, &[u8])> = files
            .iter()
            .map(|f| (f.encode_to_vec(), &b""[..]))
            .collect();
        fs::write(dir.join("files.img"), image(FILES_MAGIC, &entries)).unwrap();
    }

    #[test]
    fn only_the_files_a_queued_message_carries_are_listed_past_each_message_s_data() {
        let dir = feather_testkit::ScratchDir::new("queued-files");
        assert_eq!(queued_files(&dir.0).unwrap(), Vec::new());
        queue_file(&dir.0, 7, "/proc/sys/kernel/core_pattern", 30);
        assert_eq!(
            queued_files(&dir.0).unwrap(),
            vec![QueuedFile {
                id: 7,
                path: "/proc/sys/kernel/core_pattern".into(),
                mnt_id: Some(30),
            }]
        );
    }

    /// Writes into `dir` a queue of one message carrying `rights`, and a `files.img` of
    /// `files` (kind, id).
    fn queue(dir: &Path, rights: Vec<u32>, files: &[(i32, u32)]) {
        let packet = SkPacketEntry {
            id_for: Some(9),
            length: Some(0),
            scm: vec![ScmEntry {
                kind: Some(1),
                rights,
            }],
        };
        fs::write(
            dir.join("sk-queues.img"),
            image(SK_QUEUES_MAGIC, &[(packet.encode_to_vec(), b"")]),
        )
        .unwrap();
        let entries: Vec<(Vec<u8>, &[u8])> = files
            .iter()
            .map(|&(kind, id)| {
                let file = FileEntry {
                    kind: Some(kind),
                    id: Some(id),
                    reg: None,
                };
                (file.encode_to_vec(), &b""[..])
            })
            .collect();
        fs::write(dir.join("files.img"), image(FILES_MAGIC, &entries)).unwrap();
    }

    /// A queued FIFO opens the path of the REG entry its `regf_id` names, which the reader
    /// does not follow: it is refused, as is a TTY or a type unknown, and a queued id no image
    /// has (review fixrestore30 H1: before, the FIFO passed, and CRIU queued a writable
    /// `core_pattern`). Pipes, sockets and memfds pass, listing nothing.
    #[test]
    fn a_queued_file_of_a_type_that_may_open_a_path_or_of_none_is_refused() {
        let dir = feather_testkit::ScratchDir::new("queued-types");
        let reason = |rights: Vec<u32>, files: &[(i32, u32)]| {
            queue(&dir.0, rights, files);
            queued_files(&dir.0).map_err(|e| e.to_string())
        };
        let fifo = reason(vec![50], &[(3, 50), (FD_TYPE_REG, 51)]).unwrap_err();
        assert!(fifo.contains("file id 50, of type Some(3)"), "{fifo}");
        let tty = reason(vec![50], &[(11, 50)]).unwrap_err();
        assert!(tty.contains("of type Some(11)"), "{tty}");
        let missing = reason(vec![50, 60], &[(2, 50)]).unwrap_err();
        assert!(
            missing.contains("file id 60, found in no image"),
            "{missing}"
        );
        assert_eq!(reason(vec![50, 60], &[(2, 50), (18, 60)]), Ok(Vec::new()));
    }

    /// A message carrying more descriptors than the kernel's `SCM_MAX_FD` is refused before
    /// its ids are collected (review fixrestore30 M4).
    #[test]
    fn a_message_carrying_more_descriptors_than_the_kernel_allows_is_refused() {
        let dir = feather_testkit::ScratchDir::new("queued-many");
        let pipes: Vec<(i32, u32)> = (0..254).map(|id| (2, id)).collect();
        queue(&dir.0, (0..253).collect(), &pipes);
        assert_eq!(queued_files(&dir.0).unwrap(), Vec::new());
        queue(&dir.0, (0..254).collect(), &pipes);
        let refused = queued_files(&dir.0).unwrap_err().to_string();
        assert!(refused.contains("254 descriptors, more than"), "{refused}");
    }
}
