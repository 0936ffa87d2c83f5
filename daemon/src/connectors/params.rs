//! An action's params: a typed `Params` (serde) per action, and what is derived from it
//! once: its JSON Schema (for `ListActions` and the docs) and the declared params the
//! workflow loader checks a file against (names, required ones, literal types, groups that
//! exclude each other). Nothing about params is written twice.
//!
//! The loader checks literal values with positions (`file:line:column`); values that come
//! from expressions are known only when the step runs, when [`parse`] deserializes the
//! rendered params into the action's type and names the param that does not fit.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::status::StatusSet;

/// The type a param must have, as the loader checks a literal value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    /// A duration string such as `500ms`, `2s`, `5m`, `1h` ([`Duration`]).
    Duration,
    /// A list of HTTP statuses and ranges, such as `[200-299, 404]` ([`StatusList`]).
    StatusList,
    /// One of the listed strings.
    OneOf(Vec<String>),
    /// Anything.
    Any,
}

impl ParamType {
    pub fn describe(&self) -> String {
        match self {
            ParamType::String => "a string".into(),
            ParamType::Integer => "an integer".into(),
            ParamType::Number => "a number".into(),
            ParamType::Boolean => "a boolean".into(),
            ParamType::Object => "a mapping".into(),
            ParamType::Array => "a list".into(),
            ParamType::Duration => "a duration such as 500ms, 2s or 5m".into(),
            ParamType::StatusList => {
                "a list of HTTP statuses or ranges such as [200-299, 404]".into()
            }
            ParamType::OneOf(values) => format!("one of {}", values.join(", ")),
            ParamType::Any => "any value".into(),
        }
    }

    /// Reads a property's schema. Custom types say what they are with `format`.
    fn of(schema: &Value) -> ParamType {
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return ParamType::OneOf(
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            );
        }
        match schema.get("format").and_then(Value::as_str) {
            Some(DURATION_FORMAT) => return ParamType::Duration,
            Some(STATUS_LIST_FORMAT) => return ParamType::StatusList,
            _ => {}
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => ParamType::String,
            Some("integer") => ParamType::Integer,
            Some("number") => ParamType::Number,
            Some("boolean") => ParamType::Boolean,
            Some("object") => ParamType::Object,
            Some("array") => ParamType::Array,
            _ => ParamType::Any,
        }
    }
}

/// One declared param.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    pub required: bool,
    pub description: String,
}

/// What an action's params accept, derived from its `Params` type.
#[derive(Debug, Clone)]
pub struct Declared {
    /// JSON Schema (draft 2020-12) of the params.
    pub schema: Value,
    pub params: Vec<ParamSpec>,
    /// Whether params not declared are accepted (`core/set`).
    pub open: bool,
    /// Groups of params of which at most one may be set.
    pub exclusive: Vec<Vec<String>>,
}

impl Declared {
    /// Reads what the loader checks out of `schema`, an object schema: its properties,
    /// `required`, `additionalProperties` and `allOf: [{not: {required: [...]}}]` groups.
    pub fn from_schema(schema: Value) -> Declared {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let params = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .map(|(name, p)| ParamSpec {
                        name: name.clone(),
                        ty: ParamType::of(p),
                        required: required.contains(&name.as_str()),
                        description: p
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let open = schema.get("additionalProperties") != Some(&Value::Bool(false));
        let exclusive = schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(|groups| {
                groups
                    .iter()
                    .filter_map(|g| g.pointer("/not/required")?.as_array())
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(|n| n.as_str().map(str::to_owned))
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Declared {
            schema,
            params,
            open,
            exclusive,
        }
    }

    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// The JSON Schema of `P`, inline (no `$ref`s), with optional fields not nullable: a param
/// is either given with a value of its type or left out.
pub fn schema_of<P: JsonSchema>() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<P>();
    let mut schema = schema.to_value();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for p in props.values_mut() {
            drop_null(p);
        }
    }
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("title");
    }
    schema
}

/// `Option<T>` allows `null`; a param's schema says only what a value must be.
fn drop_null(p: &mut Value) {
    let Some(obj) = p.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(values)) = obj.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            obj.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any)) = obj.get("anyOf")
        && any.len() == 2
        && any
            .iter()
            .any(|s| s.get("type") == Some(&Value::from("null")))
    {
        let inner = any
            .iter()
            .find(|s| s.get("type") != Some(&Value::from("null")))
            .cloned()
            .unwrap_or(Value::Bool(true));
        obj.remove("anyOf");
        if let Value::Object(inner) = inner {
            for (k, v) in inner {
                obj.entry(k).or_insert(v);
            }
        }
    }
}

/// Deserializes rendered params into `P`; the error names the param, as
/// `params.timeout: ...`.
pub fn parse<P: DeserializeOwned>(params: &Map<String, Value>) -> Result<P, String> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json appends the position in the text, which a value has none of.
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned();
        if path == "." {
            format!("params: {inner}")
        } else {
            format!("params.{path}: {inner}")
        }
    })
}

/// Implements `JsonSchema` for a param type whose schema is written by hand: `$schema`,
/// always inline.
macro_rules! inline_schema {
    ($ty:ty, $schema:tt) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}
pub(crate) use inline_schema;

const DURATION_FORMAT: &str = "duration";
const STATUS_LIST_FORMAT: &str = "http-statuses";

/// A duration param, written `500ms`, `2s`, `5m`, `1h`, `1d` or a sum such as `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = <Cow<'de, str>>::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration such as 500ms, 2s or 5m"))?;
        crate::duration::parse(&text)
            .map(Duration)
            .map_err(serde::de::Error::custom)
    }
}

inline_schema!(Duration, {
    "type": "string",
    "format": DURATION_FORMAT,
    "pattern": "^\\s*([0-9]+(ms|s|m|h|d))+\\s*$",
});

/// A list of HTTP statuses and inclusive ranges, written `[200-299, 404]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusList(pub StatusSet);

impl<'de> Deserialize<'de> for StatusList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StatusList, D::Error> {
        let value = Value::deserialize(d)?;
        StatusSet::from_json(&value)
            .map(StatusList)
            .map_err(serde::de::Error::custom)
    }
}

inline_schema!(StatusList, {
    "type": "array",
    "format": STATUS_LIST_FORMAT,
    "items": {"anyOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {"type": "string", "pattern": "^[1-5][0-9]{2}(-[1-5][0-9]{2})?$"},
    ]},
});

/// A value sent as text (a header, a query parameter): a string, a number or a boolean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Text(s)),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok(Text(v.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a string, a number or a boolean, found {}",
                kind(&other)
            ))),
        }
    }
}

inline_schema!(Text, {"type": ["string", "number", "boolean"]});

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Params of a test action: every kind of field the loader tells apart.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(extend("allOf" = [{"not": {"required": ["a", "b"]}}]))]
    #[allow(dead_code)]
    struct Sample {
        /// the name
        name: String,
        /// how many
        count: Option<u32>,
        ratio: Option<f64>,
        on: Option<bool>,
        wait: Option<Duration>,
        statuses: Option<StatusList>,
        headers: Option<std::collections::BTreeMap<String, Text>>,
        items: Option<Vec<String>>,
        a: Option<Value>,
        b: Option<String>,
        color: Option<Color>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Color {
        #[serde(rename = "red")]
        Red,
        #[serde(rename = "blue")]
        Blue,
    }

    #[test]
    fn declared_params_come_from_the_type() {
        let d = Declared::from_schema(schema_of::<Sample>());
        let ty = |n: &str| d.param(n).unwrap().ty.clone();
        assert_eq!(ty("name"), ParamType::String);
        assert_eq!(ty("count"), ParamType::Integer);
        assert_eq!(ty("ratio"), ParamType::Number);
        assert_eq!(ty("on"), ParamType::Boolean);
        assert_eq!(ty("wait"), ParamType::Duration);
        assert_eq!(ty("statuses"), ParamType::StatusList);
        assert_eq!(ty("headers"), ParamType::Object);
        assert_eq!(ty("items"), ParamType::Array);
        assert_eq!(ty("a"), ParamType::Any);
        assert_eq!(
            ty("color"),
            ParamType::OneOf(vec!["red".into(), "blue".into()])
        );
        let required: Vec<&str> = d
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(required, ["name"]);
        assert_eq!(d.param("name").unwrap().description, "the name");
        assert!(!d.open);
        assert_eq!(d.exclusive, [vec!["a".to_owned(), "b".to_owned()]]);
        // No `$ref`, no `null` in a param's type.
        let text = d.schema.to_string();
        assert!(!text.contains("$ref") && !text.contains("null"), "{text}");
        assert_eq!(
            d.schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }

    #[test]
    fn parse_names_the_param_that_does_not_fit() {
        let params = |v: Value| v.as_object().unwrap().clone();
        let err = |v: Value| parse::<Sample>(&params(v)).err().unwrap();
        assert_eq!(
            err(json!({"name": "x", "wait": "soon"})),
            format!(
                "params.wait: {}",
                crate::duration::parse("soon").unwrap_err()
            )
        );
        assert!(err(json!({})).starts_with("params: missing field `name`"));
        assert!(err(json!({"name": 3})).starts_with("params.name: invalid type: integer `3`"));
        assert_eq!(
            err(json!({"name": "x", "statuses": [200, 700]})),
            "params.statuses: [1]: 700 is not an HTTP status (100 to 599)"
        );
        assert_eq!(
            err(json!({"name": "x", "headers": {"h": [1]}})),
            "params.headers.h: expected a string, a number or a boolean, found a list"
        );
        assert!(
            err(json!({"name": "x", "nope": 1})).starts_with("params.nope: unknown field `nope`"),
            "{}",
            err(json!({"name": "x", "nope": 1}))
        );
        let ok: Sample = parse(&params(
            json!({"name": "x", "wait": "1m30s", "headers": {"n": 3, "b": true}}),
        ))
        .unwrap();
        assert_eq!(ok.wait, Some(Duration(std::time::Duration::from_secs(90))));
        assert_eq!(ok.headers.unwrap()["n"], Text("3".into()));
    }
}
