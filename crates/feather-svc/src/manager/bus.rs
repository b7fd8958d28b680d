//! A minimal client of the VM's own D-Bus system bus, for `Type=dbus` readiness: a service of
//! that type is ready once its `BusName=` has an owner on the bus, as systemd decides it.
//!
//! What the manager needs of the bus is four messages: authenticate (`AUTH EXTERNAL`), `Hello`,
//! one `AddMatch` for `NameOwnerChanged` signals, and `NameHasOwner` for each name it waits
//! for (asked after the match is in place, so a name taken in between is not missed). That is
//! written here, on a non-blocking unix socket that sits in the manager's own `poll` loop,
//! rather than taken from a crate:
//! - `zbus` is built on an async runtime and runs its own threads: far too much for a service
//!   manager that aims at under 2 MiB resident;
//! - `dbus` binds the C libdbus (its headers and pkg-config at build time, its own dispatch
//!   and allocations at run time) for the same four messages;
//! - `rustbus` pins older `nix` and `thiserror` majors (two copies of each in the build) and its
//!   connections block with timeouts instead of sitting in the caller's `poll`.
//!
//! The wire format is the D-Bus specification's: little-endian messages are written; both
//! byte orders are read. Only the types these messages use are marshalled (`s`, `o`, `g`, `u`,
//! `b`).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

/// Where a VM's system bus listens (dbus.socket's `ListenStream=`).
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";

/// Message types.
const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;

/// Header field codes.
const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SIGNATURE: u8 = 8;

/// A message larger than this is refused (the specification's own limit is 128 MiB; the
/// messages this client reads are a few hundred bytes).
const MAX_MESSAGE: usize = 1 << 20;

/// What the bus told the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `name` has an owner now (`true`), or has none (`false`).
    Owner { name: String, owned: bool },
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// `AUTH EXTERNAL` sent; waiting for `OK`.
    Authenticating,
    /// Authenticated; `Hello` and the match sent.
    Connected,
}

/// What went wrong talking to the VM's system bus; the connection is unusable after any.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("connect {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Setup { path: String, error: std::io::Error },
    #[error("the bus closed the connection")]
    Closed,
    #[error("reading from the bus: {0}")]
    Read(std::io::Error),
    #[error("writing to the bus: {0}")]
    Write(std::io::Error),
    #[error("the bus refused authentication: {0:?}")]
    AuthenticationRefused(String),
    #[error("the bus answered NameHasOwner({name}) with {error}")]
    NameHasOwnerRefused { name: String, error: String },
    #[error("the bus refused a request: {0}")]
    Refused(String),
    #[error("the bus sent a message with byte order {0:#x}")]
    ByteOrder(u8),
    #[error("the bus sent a message of {0} bytes")]
    TooLarge(usize),
    #[error("the bus sent a header field of type {0:?}")]
    FieldType(String),
    #[error("the bus answered with signature {0:?}, not a boolean")]
    NotBoolean(String),
    #[error("unexpected {0:?} in a signal body")]
    SignalBody(char),
    #[error("the bus sent a truncated message")]
    Truncated,
}

/// One connection to a system bus.
pub struct Bus {
    stream: UnixStream,
    stage: Stage,
    input: Vec<u8>,
    output: Vec<u8>,
    serial: u32,
    /// `NameHasOwner` calls waiting for their answer, by serial.
    asked: BTreeMap<u32, String>,
    /// Names to ask about once authenticated.
    queued: Vec<String>,
}

impl Bus {
    /// Connects to the bus at `path` and starts authenticating (as the manager's own uid).
    pub fn connect(path: &str) -> Result<Bus, BusError> {
        let stream = UnixStream::connect(path).map_err(|error| BusError::Connect {
            path: path.to_owned(),
            error,
        })?;
        stream
            .set_nonblocking(true)
            .map_err(|error| BusError::Setup {
                path: path.to_owned(),
                error,
            })?;
        let uid = nix::unistd::getuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        let mut bus = Bus {
            stream,
            stage: Stage::Authenticating,
            input: Vec::new(),
            output: Vec::new(),
            serial: 0,
            asked: BTreeMap::new(),
            queued: Vec::new(),
        };
        // The credentials byte, then the SASL line: the bus checks the uid by SO_PEERCRED.
        bus.output.push(0);
        bus.output
            .extend_from_slice(format!("AUTH EXTERNAL {hex}\r\n").as_bytes());
        bus.flush()?;
        Ok(bus)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether the bus answered the authentication (a bus whose socket is held by the service
    /// manager but whose daemon is not running accepts a connection and never answers).
    pub fn answered(&self) -> bool {
        self.stage == Stage::Connected
    }

    /// Whether there is output the socket did not take yet (poll for POLLOUT then).
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Asks whether `name` has an owner; the answer comes as an [`Event::Owner`], and so does
    /// every later change of its owner.
    pub fn watch(&mut self, name: &str) -> Result<(), BusError> {
        if self.stage == Stage::Authenticating {
            self.queued.push(name.to_owned());
            return Ok(());
        }
        let serial = self.call("NameHasOwner", Some(name));
        self.asked.insert(serial, name.to_owned());
        self.flush()
    }

    /// Reads and writes what the socket allows; returns what the bus said. An error means the
    /// connection is unusable (the bus went away, or it refused this client).
    pub fn process(&mut self) -> Result<Vec<Event>, BusError> {
        self.flush()?;
        let mut buffer = [0u8; 4096];
        loop {
            match self.stream.read(&mut buffer) {
                Ok(0) => return Err(BusError::Closed),
                Ok(n) => self.input.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(BusError::Read(e)),
            }
        }
        let mut events = Vec::new();
        if self.stage == Stage::Authenticating {
            let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") else {
                return Ok(events);
            };
            let line = String::from_utf8_lossy(&self.input[..end]).into_owned();
            self.input.drain(..end + 2);
            if !line.starts_with("OK ") {
                return Err(BusError::AuthenticationRefused(line));
            }
            self.output.extend_from_slice(b"BEGIN\r\n");
            self.stage = Stage::Connected;
            self.call("Hello", None);
            self.call(
                "AddMatch",
                Some("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',path='/org/freedesktop/DBus'"),
            );
            for name in std::mem::take(&mut self.queued) {
                let serial = self.call("NameHasOwner", Some(&name));
                self.asked.insert(serial, name);
            }
            self.flush()?;
        }
        while let Some(length) = message_length(&self.input)? {
            if self.input.len() < length {
                break;
            }
            let bytes: Vec<u8> = self.input.drain(..length).collect();
            let message = Message::parse(&bytes)?;
            if let Some(event) = self.interpret(&message)? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn interpret(&mut self, message: &Message) -> Result<Option<Event>, BusError> {
        match message.kind {
            METHOD_RETURN => {
                let Some(name) = message.reply_serial.and_then(|s| self.asked.remove(&s)) else {
                    return Ok(None);
                };
                let owned = message.body_boolean()?;
                Ok(Some(Event::Owner { name, owned }))
            }
            ERROR => {
                let error = message.error_name.clone().unwrap_or_default();
                match message.reply_serial.and_then(|s| self.asked.remove(&s)) {
                    Some(name) => Err(BusError::NameHasOwnerRefused { name, error }),
                    // Hello or AddMatch refused: nothing this client can go on with.
                    None => Err(BusError::Refused(error)),
                }
            }
            SIGNAL if message.member.as_deref() == Some("NameOwnerChanged") => {
                let strings = message.body_strings()?;
                match strings.as_slice() {
                    [name, _old, new] => Ok(Some(Event::Owner {
                        name: name.clone(),
                        owned: !new.is_empty(),
                    })),
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// Queues a method call on the bus itself, with at most one string argument; returns its
    /// serial.
    fn call(&mut self, member: &str, argument: Option<&str>) -> u32 {
        self.serial += 1;
        let serial = self.serial;
        self.output
            .extend_from_slice(&method_call(serial, member, argument));
        serial
    }

    fn flush(&mut self) -> Result<(), BusError> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Err(BusError::Closed),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(BusError::Write(e)),
            }
        }
        Ok(())
    }
}

/// Builds the wire form of a method call to `org.freedesktop.DBus`.
fn method_call(serial: u32, member: &str, argument: Option<&str>) -> Vec<u8> {
    let mut body = Writer::default();
    if let Some(argument) = argument {
        body.string(argument);
    }
    let mut m = Writer::default();
    m.bytes(&[b'l', METHOD_CALL, 0, 1]);
    m.u32(body.0.len() as u32);
    m.u32(serial);
    let mut fields = Writer::default();
    let mut field = |code: u8, signature: &str, value: &dyn Fn(&mut Writer)| {
        fields.align(8);
        fields.bytes(&[code]);
        fields.signature(signature);
        value(&mut fields);
    };
    field(FIELD_PATH, "o", &|w| w.string(BUS_PATH));
    field(FIELD_INTERFACE, "s", &|w| w.string(BUS_NAME));
    field(FIELD_MEMBER, "s", &|w| w.string(member));
    field(FIELD_DESTINATION, "s", &|w| w.string(BUS_NAME));
    if argument.is_some() {
        field(FIELD_SIGNATURE, "g", &|w| w.signature("s"));
    }
    // The fields array starts at offset 16, which is 8-aligned, so alignment within `fields`
    // (counted from its own start) is alignment within the message.
    m.u32(fields.0.len() as u32);
    m.bytes(&fields.0);
    m.align(8);
    m.bytes(&body.0);
    m.0
}

/// Little-endian marshalling of the few types used here; offsets count from the start of the
/// buffer, which always starts 8-aligned in the message.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn align(&mut self, to: usize) {
        while !self.0.len().is_multiple_of(to) {
            self.0.push(0);
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn u32(&mut self, value: u32) {
        self.align(4);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// `s` and `o`: length, bytes, NUL.
    fn string(&mut self, value: &str) {
        self.u32(value.len() as u32);
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(0);
    }

    /// `g`: one-byte length, bytes, NUL.
    fn signature(&mut self, value: &str) {
        self.0.push(value.len() as u8);
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(0);
    }
}

/// The whole length of the message at the start of `input`, once its fixed header is there.
fn message_length(input: &[u8]) -> Result<Option<usize>, BusError> {
    if input.len() < 16 {
        return Ok(None);
    }
    let little = match input[0] {
        b'l' => true,
        b'B' => false,
        other => return Err(BusError::ByteOrder(other)),
    };
    let word = |at: usize| read_u32(&input[at..at + 4], little) as usize;
    let body = word(4);
    let fields = word(12);
    let header = (16 + fields).next_multiple_of(8);
    let total = header.saturating_add(body);
    if total > MAX_MESSAGE {
        return Err(BusError::TooLarge(total));
    }
    Ok(Some(total))
}

fn read_u32(bytes: &[u8], little: bool) -> u32 {
    let array = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if little {
        u32::from_le_bytes(array)
    } else {
        u32::from_be_bytes(array)
    }
}

/// The parts of a received message this client looks at.
#[derive(Debug)]
struct Message {
    kind: u8,
    little: bool,
    member: Option<String>,
    error_name: Option<String>,
    reply_serial: Option<u32>,
    signature: String,
    body: Vec<u8>,
}

impl Message {
    fn parse(bytes: &[u8]) -> Result<Message, BusError> {
        let little = bytes[0] == b'l';
        let mut reader = Reader {
            bytes,
            at: 12,
            little,
        };
        let fields_length = reader.u32()? as usize;
        let fields_end = 16 + fields_length;
        let mut message = Message {
            kind: bytes[1],
            little,
            member: None,
            error_name: None,
            reply_serial: None,
            signature: String::new(),
            body: Vec::new(),
        };
        while reader.at < fields_end {
            reader.align(8);
            if reader.at >= fields_end {
                break;
            }
            let code = reader.byte()?;
            let signature = reader.signature()?;
            match signature.as_str() {
                "s" | "o" => {
                    let value = reader.string()?;
                    match code {
                        FIELD_MEMBER => message.member = Some(value),
                        FIELD_ERROR_NAME => message.error_name = Some(value),
                        _ => {}
                    }
                }
                "g" => {
                    let value = reader.signature()?;
                    if code == FIELD_SIGNATURE {
                        message.signature = value;
                    }
                }
                "u" => {
                    let value = reader.u32()?;
                    if code == FIELD_REPLY_SERIAL {
                        message.reply_serial = Some(value);
                    }
                }
                other => return Err(BusError::FieldType(other.to_owned())),
            }
        }
        let body_start = fields_end.next_multiple_of(8);
        message.body = bytes.get(body_start..).unwrap_or_default().to_vec();
        Ok(message)
    }

    fn body_reader(&self) -> Reader<'_> {
        Reader {
            bytes: &self.body,
            at: 0,
            little: self.little,
        }
    }

    /// A body that is one boolean (NameHasOwner's answer).
    fn body_boolean(&self) -> Result<bool, BusError> {
        if self.signature != "b" {
            return Err(BusError::NotBoolean(self.signature.clone()));
        }
        Ok(self.body_reader().u32()? != 0)
    }

    /// A body made only of strings.
    fn body_strings(&self) -> Result<Vec<String>, BusError> {
        let mut reader = self.body_reader();
        self.signature
            .chars()
            .map(|c| match c {
                's' | 'o' => reader.string(),
                other => Err(BusError::SignalBody(other)),
            })
            .collect()
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    little: bool,
}

impl Reader<'_> {
    fn align(&mut self, to: usize) {
        self.at = self.at.next_multiple_of(to);
    }

    fn take(&mut self, n: usize) -> Result<&[u8], BusError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or(BusError::Truncated)?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, BusError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, BusError> {
        self.align(4);
        let little = self.little;
        Ok(read_u32(self.take(4)?, little))
    }

    fn string(&mut self) -> Result<String, BusError> {
        let length = self.u32()? as usize;
        let text = String::from_utf8_lossy(self.take(length)?).into_owned();
        self.take(1)?;
        Ok(text)
    }

    fn signature(&mut self) -> Result<String, BusError> {
        let length = self.byte()? as usize;
        let text = String::from_utf8_lossy(self.take(length)?).into_owned();
        self.take(1)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as dbus-daemon would send it, built with the same writer.
    fn reply(
        kind: u8,
        reply_serial: u32,
        member: Option<&str>,
        signature: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let mut m = Writer::default();
        m.bytes(&[b'l', kind, 0, 1]);
        m.u32(body.len() as u32);
        m.u32(7);
        let mut fields = Writer::default();
        fields.align(8);
        fields.bytes(&[FIELD_REPLY_SERIAL]);
        fields.signature("u");
        fields.u32(reply_serial);
        if let Some(member) = member {
            fields.align(8);
            fields.bytes(&[FIELD_MEMBER]);
            fields.signature("s");
            fields.string(member);
        }
        fields.align(8);
        fields.bytes(&[FIELD_SIGNATURE]);
        fields.signature("g");
        fields.signature(signature);
        m.u32(fields.0.len() as u32);
        m.bytes(&fields.0);
        m.align(8);
        m.bytes(body);
        m.0
    }

    #[test]
    fn a_method_call_is_laid_out_as_the_specification_says() {
        let call = method_call(3, "NameHasOwner", Some("org.example.Name"));
        assert_eq!(&call[..4], &[b'l', METHOD_CALL, 0, 1]);
        let length = message_length(&call).unwrap().unwrap();
        assert_eq!(length, call.len());
        let parsed = Message::parse(&call).unwrap();
        assert_eq!(parsed.member.as_deref(), Some("NameHasOwner"));
        assert_eq!(parsed.signature, "s");
        let mut reader = parsed.body_reader();
        assert_eq!(reader.string().unwrap(), "org.example.Name");
        // A call without arguments has no body and no signature field.
        let hello = method_call(1, "Hello", None);
        assert_eq!(message_length(&hello).unwrap(), Some(hello.len()));
        assert!(Message::parse(&hello).unwrap().body.is_empty());
    }

    #[test]
    fn replies_and_signals_become_owner_events() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut bus = Bus {
            stream: ours,
            stage: Stage::Connected,
            input: Vec::new(),
            output: Vec::new(),
            serial: 0,
            asked: BTreeMap::new(),
            queued: Vec::new(),
        };
        bus.asked.insert(4, "org.example.Name".into());
        let answer = reply(METHOD_RETURN, 4, None, "b", &1u32.to_le_bytes());
        let message = Message::parse(&answer).unwrap();
        assert_eq!(
            bus.interpret(&message).unwrap(),
            Some(Event::Owner {
                name: "org.example.Name".into(),
                owned: true
            })
        );
        // An answer nobody asked for is ignored.
        assert_eq!(bus.interpret(&message).unwrap(), None);
        let mut body = Writer::default();
        body.string("org.example.Name");
        body.string(":1.4");
        body.string("");
        let signal = reply(SIGNAL, 0, Some("NameOwnerChanged"), "sss", &body.0);
        assert_eq!(
            bus.interpret(&Message::parse(&signal).unwrap()).unwrap(),
            Some(Event::Owner {
                name: "org.example.Name".into(),
                owned: false
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(message_length(b"xxxxxxxxxxxxxxxxxxxx").is_err());
        let mut huge = method_call(1, "Hello", None);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(message_length(&huge).is_err());
        let mut truncated = method_call(1, "NameHasOwner", Some("a.b"));
        truncated.truncate(truncated.len() - 6);
        let parsed = Message::parse(&truncated).unwrap();
        assert!(parsed.body_reader().string().is_err());
    }
}
