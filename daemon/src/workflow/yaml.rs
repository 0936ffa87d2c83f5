//! A YAML document as a tree of nodes that remember where they were written.
//!
//! serde-saphyr parses (with budgets against hostile input, duplicate keys rejected, YAML
//! 1.2 booleans only); its `Spanned` wrapper gives every node and key its line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Largest workflow file accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML value with its position and byte offset in the source.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
    pub offset: usize,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: its text as written, and where.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Value {
    /// The kind, for messages such as "expected a string, found a list".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a decimal number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The value as JSON (keys as written; non-finite floats become null).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => s.clone().into(),
            Value::Seq(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }

    /// Whether the scalar at this node is written in quotes (`"` or `'`), judged from the source.
    pub fn is_quoted(&self, source: &str) -> bool {
        matches!(source.as_bytes().get(self.offset), Some(b'"' | b'\''))
    }
}

/// A syntax problem found while parsing.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses `source` into a node tree. Deserialization recurses once per nesting level (at
/// most [`MAX_DEPTH`]): call it on a thread with a generous stack, as [`super::load`] does.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(SyntaxError {
            pos: Pos { line: 1, column: 1 },
            message: format!(
                "the file is {} bytes; workflow files may be at most {MAX_SOURCE_BYTES} bytes",
                source.len()
            ),
        });
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(source, options).map_err(|err| {
        let pos = err
            .location()
            .map(|l| Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            })
            .unwrap_or(Pos { line: 1, column: 1 });
        SyntaxError {
            pos,
            message: clean_message(&err.to_string()),
        }
    })
}

/// Drops the "line N column M:" prefix the parser puts in its messages; we print our own.
fn clean_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let rest = match first.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("line ") => rest,
        _ => first,
    };
    rest.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            pos: Pos {
                line: spanned.referenced.line() as u32,
                column: spanned.referenced.column() as u32,
            },
            offset: spanned
                .referenced
                .span()
                .byte_offset()
                .map_or(usize::MAX, |o| o as usize),
        })
    }
}

/// The text of a key scalar.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(node) = seq.next_element::<Node>()? {
                    items.push(node);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, node)) = map.next_entry::<Spanned<KeyText>, Node>()? {
                    entries.push((
                        Key {
                            name: key.value.0,
                            pos: Pos {
                                line: key.referenced.line() as u32,
                                column: key.referenced.column() as u32,
                            },
                        },
                        node,
                    ));
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(node: &'a Node, key: &str) -> &'a Node {
        match &node.value {
            Value::Map(entries) => &entries.iter().find(|(k, _)| k.name == key).unwrap().1,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn positions_and_types() {
        let src = "name: demo\nsteps:\n  - name: a\n    params: {n: 3, f: 1.5, b: true, s: yes, z: ~, q: \"x\"}\n";
        let root = parse(src).unwrap();
        assert_eq!(get(&root, "name").pos, Pos { line: 1, column: 7 });
        let steps = get(&root, "steps");
        let Value::Seq(items) = &steps.value else {
            panic!()
        };
        let params = get(&items[0], "params");
        assert!(matches!(get(params, "n").value, Value::Int(3)));
        assert!(matches!(get(params, "f").value, Value::Float(f) if f == 1.5));
        assert!(matches!(get(params, "b").value, Value::Bool(true)));
        // YAML 1.2: `yes` is a string, not a boolean.
        assert!(matches!(&get(params, "s").value, Value::Str(s) if s == "yes"));
        assert!(matches!(get(params, "z").value, Value::Null));
        let q = get(params, "q");
        assert!(q.is_quoted(src));
        assert!(!get(params, "s").is_quoted(src));
        assert_eq!(
            get(&items[0], "name").pos,
            Pos {
                line: 3,
                column: 11
            }
        );
    }

    #[test]
    fn duplicate_keys_are_rejected_with_position() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 1 });
        assert!(
            err.message.contains("duplicate mapping key: a"),
            "{}",
            err.message
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1,\n").unwrap_err();
        assert_eq!(err.pos.line, 1);
        assert!(err.message.contains("unclosed bracket"), "{}", err.message);
    }

    #[test]
    fn nesting_is_bounded() {
        crate::workflow::load::with_big_stack(nesting_checks);
    }

    fn nesting_checks() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).is_err());
        let ok = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        assert!(parse(&ok).is_ok());
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert!(parse(&block).is_err());
    }

    #[test]
    fn numeric_keys_keep_their_text() {
        let root = parse("1: a\ntrue: b\n").unwrap();
        let Value::Map(entries) = &root.value else {
            panic!()
        };
        assert_eq!(entries[0].0.name, "1");
        assert_eq!(entries[1].0.name, "true");
    }
}
