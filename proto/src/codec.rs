//! The codec of every Mantle RPC: prost's, with each request checked before it is decoded.
//!
//! The string fields of a request must be valid UTF-8 without U+0000 (NUL): PostgreSQL
//! cannot store NUL in text, and SQLite can, so refusing it at the door is what makes both
//! stores behave alike. A bad field answers INVALID_ARGUMENT naming it (`display_name`,
//! `fields["token"]`), where prost's own check would fail the whole message with an error
//! tonic answers INTERNAL, naming nothing. A request that is not valid protobuf at all
//! answers INVALID_ARGUMENT too: the client sent it.
//!
//! Only messages named `…Request` are checked: clients decode answers with this codec as
//! well, and an answer is the server's to get right.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::LazyLock;

use bytes::Buf;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use tonic::Status;
use tonic::codec::{Codec as TonicCodec, DecodeBuf, Decoder};

/// The codec the generated clients and servers use.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec {
            _types: PhantomData,
        }
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + prost::Name + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { _type: PhantomData }
    }
}

/// Decodes `U`, checking it first when it is a request.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default + prost::Name> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if !U::NAME.ends_with("Request") {
            return U::decode(buf)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()));
        }
        let bytes = buf.copy_to_bytes(buf.remaining());
        check(&format!(".{}", U::full_name()), &bytes).map_err(Status::invalid_argument)?;
        U::decode(bytes).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the request is not a valid {}: {e}",
                U::full_name()
            ))
        })
    }
}

/// What the check needs of a field.
#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    repeated: bool,
}

#[derive(Debug)]
enum Kind {
    Text,
    /// A message, by its full name (`.mantle.v1.Foo`).
    Message(String),
    Other,
}

#[derive(Debug, Default)]
struct Shape {
    fields: HashMap<u32, Field>,
    /// A map's entry: its key names the value in paths.
    map_entry: bool,
}

/// Every message of the descriptor set, by full name.
static SHAPES: LazyLock<HashMap<String, Shape>> = LazyLock::new(|| {
    let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes");
    let mut shapes = HashMap::new();
    for file in &set.file {
        let prefix = format!(".{}", file.package());
        for message in &file.message_type {
            add_shapes(&prefix, message, &mut shapes);
        }
    }
    shapes
});

fn add_shapes(
    prefix: &str,
    message: &prost_types::DescriptorProto,
    shapes: &mut HashMap<String, Shape>,
) {
    let name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        add_shapes(&name, nested, shapes);
    }
    let fields = message
        .field
        .iter()
        .map(|f| {
            let kind = match f.r#type() {
                Type::String => Kind::Text,
                Type::Message => Kind::Message(f.type_name().to_owned()),
                _ => Kind::Other,
            };
            (
                f.number() as u32,
                Field {
                    name: f.name().to_owned(),
                    kind,
                    repeated: f.label() == Label::Repeated,
                },
            )
        })
        .collect();
    let map_entry = message.options.as_ref().is_some_and(|o| o.map_entry());
    shapes.insert(name, Shape { fields, map_entry });
}

/// Nesting deeper than this is left to prost (which refuses it).
const MAX_DEPTH: usize = 32;

/// Checks the string fields of the message `type_name` encoded in `bytes`: `Err` says which
/// field is bad and why. Malformed bytes pass: decoding them reports that.
pub fn check(type_name: &str, bytes: &[u8]) -> Result<(), String> {
    walk(type_name, bytes, "", 0)
}

fn walk(type_name: &str, mut bytes: &[u8], path: &str, depth: usize) -> Result<(), String> {
    let Some(shape) = SHAPES.get(type_name) else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut seen: HashMap<u32, usize> = HashMap::new();
    // A map entry's value is named by its key.
    let mut entry_key: Option<String> = None;
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes) else {
            return Ok(());
        };
        let (number, wire) = ((key >> 3) as u32, key & 7);
        let data = match wire {
            0 => {
                if varint(&mut bytes).is_none() {
                    return Ok(());
                }
                continue;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if bytes.len() < n {
                    return Ok(());
                }
                bytes = &bytes[n..];
                continue;
            }
            2 => {
                let Some(len) = varint(&mut bytes).and_then(|l| usize::try_from(l).ok()) else {
                    return Ok(());
                };
                if bytes.len() < len {
                    return Ok(());
                }
                let (data, rest) = bytes.split_at(len);
                bytes = rest;
                data
            }
            _ => return Ok(()),
        };
        let Some(field) = shape.fields.get(&number) else {
            continue;
        };
        let index = seen.entry(number).or_default();
        let here = match (shape.map_entry, number, &entry_key) {
            (true, 2, Some(key)) => format!("{path}[{key:?}]"),
            (true, 1, _) => format!("{path} key"),
            (true, _, _) => path.to_owned(),
            (false, _, _) if field.repeated => {
                let p = join(path, &field.name);
                if matches!(&field.kind, Kind::Message(t) if SHAPES.get(t).is_some_and(|s| s.map_entry))
                {
                    p
                } else {
                    format!("{p}[{index}]")
                }
            }
            (false, _, _) => join(path, &field.name),
        };
        *index += 1;
        match &field.kind {
            Kind::Text => {
                let text =
                    std::str::from_utf8(data).map_err(|_| format!("{here}: is not valid UTF-8"))?;
                if let Some(at) = text.find('\0') {
                    return Err(format!(
                        "{here}: contains a NUL character (U+0000) at byte {at}, which cannot \
                         be stored"
                    ));
                }
                if shape.map_entry && number == 1 {
                    entry_key = Some(text.to_owned());
                }
            }
            Kind::Message(t) => walk(t, data, &here, depth + 1)?,
            Kind::Other => {}
        }
    }
    Ok(())
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1 as pb;

    fn checked<M: Message + prost::Name>(m: &M) -> Result<(), String> {
        check(&format!(".{}", M::full_name()), &m.encode_to_vec())
    }

    #[test]
    fn good_requests_pass() {
        assert_eq!(
            checked(&pb::CreateTenantRequest {
                name: "acme".into(),
                display_name: "Acme — Ünïcode".into(),
                ..Default::default()
            }),
            Ok(())
        );
    }

    #[test]
    fn nul_is_refused_naming_the_field() {
        let err = checked(&pb::CreateTenantRequest {
            name: "acme".into(),
            display_name: "a\0b".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.starts_with("display_name: contains a NUL"), "{err}");
        // Repeated fields by index, nested messages by path.
        let err = checked(&pb::CreateApiKeyRequest {
            tenant: "acme".into(),
            scopes: vec!["*".into(), "x\0".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.starts_with("scopes[1]:"), "{err}");
    }

    #[test]
    fn map_values_are_named_by_their_key() {
        let mut fields = std::collections::HashMap::new();
        fields.insert("token".to_owned(), "a\0".to_owned());
        let err = checked(&pb::CreateSecretRequest {
            name: "s".into(),
            r#type: "bearer".into(),
            fields,
        })
        .unwrap_err();
        assert!(err.starts_with("fields[\"token\"]:"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_refused_naming_the_field() {
        // A CreateTenantRequest whose `name` (field 1) holds the byte 0xff.
        let bytes = [0x0a, 0x02, b'a', 0xff];
        let err = check(".mantle.v1.CreateTenantRequest", &bytes).unwrap_err();
        assert_eq!(err, "name: is not valid UTF-8");
        // Malformed protobuf is left to the decoder.
        assert_eq!(
            check(".mantle.v1.CreateTenantRequest", &[0x0a, 0x7f]),
            Ok(())
        );
    }
}
