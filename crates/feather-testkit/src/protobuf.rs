//! Protobuf's wire format, just enough to rewrite a message field by field: every field kept
//! in its order, the unknown ones too (a decoder into structs, such as prost, would drop
//! them, and a crafted image must differ from the dump only where the test says).

/// One field's value as the wire has it. A message is a list of `(number, Value)`, numbers
/// repeating for repeated fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Wire type 0: int32, int64, uint32, uint64, sint*, bool, enum.
    Varint(u64),
    /// Wire type 1: fixed64, sfixed64, double.
    Fixed64([u8; 8]),
    /// Wire type 2: string, bytes, an embedded message, a packed repeated field.
    Bytes(Vec<u8>),
    /// Wire type 5: fixed32, sfixed32, float.
    Fixed32([u8; 4]),
}

/// `message`'s fields in their order. Panics on a wire type CRIU's images do not use (the
/// deprecated groups) and on a truncated message.
pub fn decode(message: &[u8]) -> Vec<(u64, Value)> {
    let (mut fields, mut at) = (Vec::new(), 0);
    while at < message.len() {
        let key = read_varint(message, &mut at);
        let value = match key & 7 {
            0 => Value::Varint(read_varint(message, &mut at)),
            1 => Value::Fixed64(take(message, &mut at, 8).try_into().unwrap()),
            2 => {
                let len = read_varint(message, &mut at) as usize;
                Value::Bytes(take(message, &mut at, len).to_vec())
            }
            5 => Value::Fixed32(take(message, &mut at, 4).try_into().unwrap()),
            other => panic!("wire type {other} in a CRIU image"),
        };
        fields.push((key >> 3, value));
    }
    fields
}

/// The message of `fields`, in their order.
pub fn encode(fields: &[(u64, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        let wire_type = match value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        write_varint(&mut out, number << 3 | wire_type);
        match value {
            Value::Varint(v) => write_varint(&mut out, *v),
            Value::Fixed64(bytes) => out.extend(bytes),
            Value::Bytes(bytes) => {
                write_varint(&mut out, bytes.len() as u64);
                out.extend(bytes);
            }
            Value::Fixed32(bytes) => out.extend(bytes),
        }
    }
    out
}

/// `message` with every occurrence of its length-delimited field `number` (an embedded
/// message, say) replaced by what `change` makes of it; as it was where it has none.
pub fn rewrite_field(
    message: &[u8],
    number: u64,
    change: &mut dyn FnMut(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut fields = decode(message);
    for (n, value) in &mut fields {
        if let (true, Value::Bytes(inner)) = (*n == number, &mut *value) {
            *inner = change(inner);
        }
    }
    encode(&fields)
}

/// The next `len` bytes of `bytes` from `at`, which moves past them.
fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> &'a [u8] {
    let taken = &bytes[*at..*at + len];
    *at += len;
    taken
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of every wire type, a repeated field and a 10-byte varint (a negative int32)
    /// comes back byte for byte, and a rewrite changes only the field it names.
    #[test]
    fn a_message_decodes_and_encodes_to_the_same_bytes() {
        let fields = vec![
            (1, Value::Varint(150)),
            (2, Value::Bytes(b"testing".to_vec())),
            (3, Value::Fixed64(7u64.to_le_bytes())),
            (3, Value::Fixed64(8u64.to_le_bytes())),
            (4, Value::Fixed32(9u32.to_le_bytes())),
            (5, Value::Varint(u64::MAX)),
        ];
        let message = encode(&fields);
        assert_eq!(&message[..5], [0x08, 0x96, 0x01, 0x12, 0x07]);
        assert_eq!(decode(&message), fields);
        assert_eq!(encode(&decode(&message)), message);

        let rewritten = rewrite_field(&message, 2, &mut |text| text.to_ascii_uppercase());
        let mut expected = fields.clone();
        expected[1].1 = Value::Bytes(b"TESTING".to_vec());
        assert_eq!(decode(&rewritten), expected);
    }
}
