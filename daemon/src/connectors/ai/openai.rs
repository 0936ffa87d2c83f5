//! The OpenAI Chat Completions wire format (`POST {base}/chat/completions`, the base URL
//! ending in `/v1`), also spoken by OpenAI-compatible APIs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::wire::{Block, Message, Reply, Request, Role, ToolChoice, Usage, WireFormat};

/// How deep [`strict_schema`] walks a schema: it comes from a tenant, and deeper parts are
/// left as they are (the API refuses schemas nested that deep anyway).
const MAX_SCHEMA_DEPTH: usize = 64;

/// The Chat Completions API.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAi;

impl WireFormat for OpenAi {
    fn path(&self) -> &'static str {
        "/chat/completions"
    }

    fn headers(&self, fields: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
        let field = |name: &str| fields.get(name).filter(|v| !v.is_empty());
        let api_key = field("api_key").ok_or("the credential has no api_key field")?;
        let mut headers = vec![("Authorization".to_owned(), format!("Bearer {api_key}"))];
        if let Some(org) = field("org_id").or_else(|| field("organization")) {
            headers.push(("OpenAI-Organization".to_owned(), org.clone()));
        }
        Ok(headers)
    }

    fn body(&self, request: &Request<'_>) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), request.model.into());
        body.insert("messages".into(), messages(request).into());
        if !request.tools.is_empty() {
            let tools = request.tools.iter().map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                })
            });
            body.insert("tools".into(), tools.collect());
            // Only with tools: the API refuses a tool_choice without them.
            if request.tool_choice == ToolChoice::None {
                body.insert("tool_choice".into(), "none".into());
            }
        }
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), temperature.into());
        }
        if let Some(max_tokens) = request.max_tokens {
            body.insert("max_tokens".into(), max_tokens.into());
        }
        if let Some(schema) = request.output_schema {
            // Built by hand: `json!` would copy the schema again, recursively.
            let json_schema = Map::from_iter([
                ("name".to_owned(), Value::from("response")),
                ("strict".to_owned(), Value::from(true)),
                ("schema".to_owned(), strict_schema(schema)),
            ]);
            let response_format = Map::from_iter([
                ("type".to_owned(), Value::from("json_schema")),
                ("json_schema".to_owned(), json_schema.into()),
            ]);
            body.insert("response_format".into(), response_format.into());
        }
        Value::Object(body)
    }

    fn parse(&self, body: &Value) -> Result<Reply, String> {
        let choice = body
            .get("choices")
            .and_then(Value::as_array)
            .ok_or("the answer has no choices")?
            .first()
            .ok_or("the answer's choices are empty")?;
        let message = choice
            .get("message")
            .filter(|m| m.is_object())
            .ok_or("the answer has no choices[0].message")?;
        let text = content_text(message.get("content"))?;
        let tool_calls = tool_calls(message)?;
        let finish_reason = match choice.get("finish_reason").and_then(Value::as_str) {
            Some("function_call") => "tool_calls".to_owned(),
            Some(reason) => reason.to_owned(),
            // Some compatible APIs leave it out.
            None if tool_calls.is_empty() => "stop".to_owned(),
            None => "tool_calls".to_owned(),
        };
        let tokens = |name: &str| {
            body.get("usage")
                .and_then(|u| u.get(name))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        Ok(Reply {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            text,
            tool_calls,
            finish_reason,
            usage: Usage {
                input_tokens: tokens("prompt_tokens"),
                output_tokens: tokens("completion_tokens"),
            },
        })
    }

    fn error_message(&self, body: &Value) -> Option<String> {
        let error = body.get("error")?;
        // Some compatible APIs answer `{"error": "text"}`.
        error
            .get("message")
            .unwrap_or(error)
            .as_str()
            .map(str::to_owned)
    }
}

/// The `messages` of a request: the system prompt, then the conversation, each tool result
/// a `tool` message of its own.
fn messages(request: &Request<'_>) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(system) = request.system {
        out.push(json!({"role": "system", "content": system}));
    }
    for message in request.messages {
        push_message(&mut out, message);
    }
    out
}

/// Adds one message of the conversation: its tool results first (they answer the previous
/// assistant message's calls), then its text and, from the assistant, its tool calls. Tool
/// calls in a user message have no form on this wire and are left out.
fn push_message(out: &mut Vec<Value>, message: &Message) {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    let mut has_results = false;
    for block in &message.content {
        match block {
            Block::Text { text } => texts.push(text.as_str()),
            Block::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": arguments_text(arguments)},
            })),
            Block::ToolResult { id, content, .. } => {
                has_results = true;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
        }
    }
    match message.role {
        Role::User => {
            if !texts.is_empty() || !has_results {
                out.push(json!({"role": "user", "content": text_content(&texts)}));
            }
        }
        Role::Assistant => {
            let mut m = Map::new();
            m.insert("role".into(), "assistant".into());
            // The API wants text or tool calls: `null` content only beside calls.
            let content = if texts.is_empty() && !calls.is_empty() {
                Value::Null
            } else {
                text_content(&texts)
            };
            m.insert("content".into(), content);
            if !calls.is_empty() {
                m.insert("tool_calls".into(), calls.into());
            }
            out.push(Value::Object(m));
        }
    }
}

/// A message's `content`: its one text as a string, several as text parts.
fn text_content(texts: &[&str]) -> Value {
    match texts {
        [] => "".into(),
        [text] => (*text).into(),
        _ => texts
            .iter()
            .map(|t| json!({"type": "text", "text": t}))
            .collect(),
    }
}

/// A tool call's arguments as the API carries them: JSON text. Arguments kept raw (they did
/// not parse) go back as the model wrote them.
fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// The answer's text: `content` as a string, `null`, or text parts.
fn content_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect()),
        Some(_) => Err("the answer's choices[0].message.content is not text".into()),
    }
}

/// The answer's tool calls: `tool_calls`, or the legacy single `function_call`.
fn tool_calls(message: &Value) -> Result<Vec<Block>, String> {
    let mut calls = Vec::new();
    match message.get("tool_calls") {
        None | Some(Value::Null) => {
            if let Some(function) = message.get("function_call").filter(|f| !f.is_null()) {
                calls.push(tool_call("", function, "choices[0].message.function_call")?);
            }
        }
        Some(Value::Array(list)) => {
            for (i, call) in list.iter().enumerate() {
                let at = format!("choices[0].message.tool_calls[{i}]");
                let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                let function = call
                    .get("function")
                    .ok_or_else(|| format!("the answer's {at} has no function"))?;
                calls.push(tool_call(id, function, &format!("{at}.function"))?);
            }
        }
        Some(_) => return Err("the answer's choices[0].message.tool_calls is not a list".into()),
    }
    name_unnamed_calls(&mut calls);
    Ok(calls)
}

/// One tool call from its id and its `{name, arguments}`; `at` names it in errors.
fn tool_call(id: &str, function: &Value, at: &str) -> Result<Block, String> {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("the answer's {at} has no name"))?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(raw)) => parse_arguments(raw),
        // Some compatible APIs send the object itself.
        Some(other) => other.clone(),
    };
    Ok(Block::ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments,
    })
}

/// Arguments JSON text as an object; anything else stays the raw text, to be sent back to
/// the model as an error. No text at all (a tool without params) is no arguments.
fn parse_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(object @ Value::Object(_)) => object,
        _ => Value::String(raw.to_owned()),
    }
}

/// Gives each call without an id one of its own, `call_<n>`, unused by the answer's other
/// calls: results are matched to calls by id.
fn name_unnamed_calls(calls: &mut [Block]) {
    let mut taken: BTreeSet<String> = calls
        .iter()
        .filter_map(|c| match c {
            Block::ToolCall { id, .. } if !id.is_empty() => Some(id.clone()),
            _ => None,
        })
        .collect();
    let mut n = 0usize;
    for call in calls {
        if let Block::ToolCall { id, .. } = call
            && id.is_empty()
        {
            let fresh = loop {
                let candidate = format!("call_{n}");
                n += 1;
                if !taken.contains(&candidate) {
                    break candidate;
                }
            };
            taken.insert(fresh.clone());
            *id = fresh;
        }
    }
}

/// `schema` as OpenAI's strict mode wants it: every object schema with `properties` lists
/// them all in `required` and has `additionalProperties: false`; a property that was
/// optional becomes nullable instead. Parts deeper than 64 levels are left as they are.
///
/// The schema is a tenant's: however deep it is, this recurses at most 64 levels.
pub fn strict_schema(schema: &Value) -> Value {
    let mut out = deep_copy(schema);
    make_strict(&mut out, 0);
    out
}

/// A copy of `value` made without recursion (the derived `clone` recurses once per level
/// of nesting, several hundred bytes of stack each).
fn deep_copy(value: &Value) -> Value {
    /// A container being copied: what is copied so far, and the children left.
    enum Open<'a> {
        Array(Vec<Value>, std::slice::Iter<'a, Value>),
        /// The key is the one of the child being copied.
        Object(Map<String, Value>, serde_json::map::Iter<'a>, String),
    }
    let mut open: Vec<Open<'_>> = Vec::new();
    let mut next = value;
    loop {
        // Copies `next`: a scalar at once, a container once its children are.
        let mut done = match next {
            Value::Array(items) => {
                open.push(Open::Array(Vec::with_capacity(items.len()), items.iter()));
                None
            }
            Value::Object(map) => {
                open.push(Open::Object(Map::new(), map.iter(), String::new()));
                None
            }
            scalar => Some(scalar.clone()),
        };
        // Hands what is done to its container, closing the containers that are complete,
        // until one has a child left to copy.
        loop {
            let Some(top) = open.last_mut() else {
                return done.expect("the outermost value is done when no container is open");
            };
            if let Some(copy) = done.take() {
                match top {
                    Open::Array(items, _) => items.push(copy),
                    Open::Object(map, _, key) => {
                        map.insert(std::mem::take(key), copy);
                    }
                }
            }
            let child = match top {
                Open::Array(_, rest) => rest.next(),
                Open::Object(_, rest, key) => rest.next().map(|(k, v)| {
                    key.clone_from(k);
                    v
                }),
            };
            if let Some(child) = child {
                next = child;
                break;
            }
            done = open.pop().map(|closed| match closed {
                Open::Array(items, _) => Value::Array(items),
                Open::Object(map, _, _) => Value::Object(map),
            });
        }
    }
}

/// Makes `schema` and the schemas within it strict, down to [`MAX_SCHEMA_DEPTH`].
fn make_strict(schema: &mut Value, depth: usize) {
    if depth >= MAX_SCHEMA_DEPTH {
        return;
    }
    let Value::Object(obj) = schema else {
        return;
    };
    // Schemas within this one.
    match obj.get_mut("items") {
        // A list of schemas in older drafts.
        Some(Value::Array(subs)) => subs.iter_mut().for_each(|s| make_strict(s, depth + 1)),
        Some(sub) => make_strict(sub, depth + 1),
        None => {}
    }
    if let Some(sub) = obj.get_mut("additionalProperties") {
        make_strict(sub, depth + 1);
    }
    for key in ["prefixItems", "anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(subs)) = obj.get_mut(key) {
            subs.iter_mut().for_each(|s| make_strict(s, depth + 1));
        }
    }
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(defs)) = obj.get_mut(key) {
            defs.values_mut().for_each(|s| make_strict(s, depth + 1));
        }
    }
    let was_required: BTreeSet<String> = match obj.get("required") {
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    };
    let Some(Value::Object(properties)) = obj.get_mut("properties") else {
        return;
    };
    let mut required = Vec::with_capacity(properties.len());
    for (name, property) in properties.iter_mut() {
        make_strict(property, depth + 1);
        if !was_required.contains(name) {
            make_nullable(property);
        }
        required.push(Value::String(name.clone()));
    }
    obj.insert("required".into(), required.into());
    obj.insert("additionalProperties".into(), false.into());
}

/// Lets an optional property be `null` too: strict mode has it always present.
fn make_nullable(property: &mut Value) {
    let null = || Value::String("null".into());
    if let Value::Object(obj) = property
        && !obj.contains_key("const")
    {
        let typed = match obj.get_mut("type") {
            Some(Value::String(t)) if t == "null" => true,
            Some(t @ Value::String(_)) => {
                *t = Value::Array(vec![t.take(), null()]);
                true
            }
            Some(Value::Array(types)) => {
                if !types.contains(&null()) {
                    types.push(null());
                }
                true
            }
            _ => false,
        };
        if typed {
            // An enum must list null too, or null still fails it.
            if let Some(Value::Array(values)) = obj.get_mut("enum")
                && !values.contains(&Value::Null)
            {
                values.push(Value::Null);
            }
            return;
        }
    }
    // Not `json!`, which would copy the property again, recursively.
    let original = property.take();
    let any_of = vec![original, json!({"type": "null"})];
    *property = Value::Object(Map::from_iter([("anyOf".to_owned(), any_of.into())]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::ai::wire::ToolDef;
    use crate::connectors::ai::wire::fixtures::*;

    fn request<'a>(messages: &'a [Message], tools: &'a [ToolDef]) -> Request<'a> {
        Request {
            model: "gpt-4o",
            system: None,
            messages,
            tools,
            tool_choice: ToolChoice::Auto,
            temperature: None,
            max_tokens: None,
            output_schema: None,
        }
    }

    #[test]
    fn a_full_conversation_has_its_exact_body() {
        let messages = conversation("call");
        let tools = [weather_tool()];
        let body = OpenAi.body(&Request {
            system: Some("Be brief."),
            temperature: Some(0.2),
            max_tokens: Some(500),
            ..request(&messages, &tools)
        });
        let expected = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking both.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\": Rome"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
                {"role": "tool", "tool_call_id": "call_2", "content": "the arguments are not JSON"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_3", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_3", "content": "{\"temp_c\":24}"},
                {"role": "user", "content": "Answer in one line."},
                {"role": "user", "content": "In Celsius."},
            ],
            "tools": [{"type": "function", "function": {
                "name": "weather",
                "description": "Current weather of a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }}],
            "temperature": 0.2,
            "max_tokens": 500,
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn unusual_messages_keep_their_turns() {
        let messages = [
            // Several texts: text parts.
            message(Role::User, vec![text("a"), text("b")]),
            // Nothing at all: still an assistant turn, with empty text.
            message(Role::Assistant, vec![]),
            // A call in a user message has no form here.
            message(Role::User, vec![call("call_9", json!({}))]),
        ];
        let body = OpenAi.body(&request(&messages, &[]));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "a"},
                    {"type": "text", "text": "b"},
                ]},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": ""},
            ])
        );
    }

    #[test]
    fn tool_choice_and_output_schema() {
        let messages = [Message::user_text("hi")];
        let tools = [weather_tool()];
        let schema = json!({
            "type": "object",
            "properties": {"answer": {"type": "string"}},
        });
        let body = OpenAi.body(&Request {
            tool_choice: ToolChoice::None,
            output_schema: Some(&schema),
            ..request(&messages, &tools)
        });
        assert_eq!(body["tool_choice"], "none");
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {
                "name": "response",
                "strict": true,
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": ["string", "null"]}},
                    "required": ["answer"],
                    "additionalProperties": false,
                },
            }})
        );
        // Auto is the API's default: not sent.
        let auto = OpenAi.body(&request(&messages, &tools));
        assert!(auto.get("tool_choice").is_none(), "{auto}");
        // Without tools there is no tool_choice either (the API refuses one), and nothing
        // unset is sent.
        let bare = OpenAi.body(&Request {
            tool_choice: ToolChoice::None,
            ..request(&messages, &[])
        });
        assert_eq!(
            bare,
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn strict_schema_requires_every_property_and_closes_objects() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "k": {"type": "string"},
                        "v": {"type": ["string", "number"]},
                    },
                    "required": ["k"],
                }},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": {"type": "string"},
                },
                "free": {"type": "object"},
            },
            "required": ["name", "tags"],
        });
        let expected = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": ["integer", "null"]},
                "tags": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "k": {"type": "string"},
                        "v": {"type": ["string", "number", "null"]},
                    },
                    "required": ["k", "v"],
                    "additionalProperties": false,
                }},
                "address": {
                    "type": ["object", "null"],
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": false,
                },
                // No properties: left open.
                "free": {"type": ["object", "null"]},
            },
            "required": ["address", "age", "free", "name", "tags"],
            "additionalProperties": false,
        });
        assert_eq!(strict_schema(&schema), expected);
        // Already strict: unchanged.
        assert_eq!(strict_schema(&expected), expected);
    }

    #[test]
    fn an_optional_property_becomes_nullable() {
        let null_type = json!({"type": "null"});
        let cases = [
            (
                json!({"type": "string"}),
                json!({"type": ["string", "null"]}),
            ),
            (
                json!({"type": ["string", "integer"]}),
                json!({"type": ["string", "integer", "null"]}),
            ),
            (
                json!({"type": ["null", "string"]}),
                json!({"type": ["null", "string"]}),
            ),
            (null_type.clone(), null_type.clone()),
            (
                json!({"type": "string", "enum": ["a", "b"]}),
                json!({"type": ["string", "null"], "enum": ["a", "b", null]}),
            ),
            (
                json!({"$ref": "#/$defs/x"}),
                json!({"anyOf": [{"$ref": "#/$defs/x"}, null_type]}),
            ),
            (
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                json!({"anyOf": [{"anyOf": [{"type": "string"}, {"type": "integer"}]}, null_type]}),
            ),
            (
                json!({"type": "string", "const": "x"}),
                json!({"anyOf": [{"type": "string", "const": "x"}, null_type]}),
            ),
            (
                json!({"enum": ["a"]}),
                json!({"anyOf": [{"enum": ["a"]}, null_type]}),
            ),
            (json!(true), json!({"anyOf": [true, null_type]})),
        ];
        for (property, nullable) in cases {
            let schema = json!({"type": "object", "properties": {"p": property}});
            let strict = strict_schema(&schema);
            assert_eq!(strict["properties"]["p"], nullable, "{property}");
            assert_eq!(strict["required"], json!(["p"]), "{property}");
            // Required already: left as it is.
            let schema =
                json!({"type": "object", "properties": {"p": property}, "required": ["p"]});
            assert_eq!(strict_schema(&schema)["properties"]["p"], property);
        }
    }

    #[test]
    fn strict_schema_walks_every_subschema() {
        let object = || json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let strict = json!({
            "type": "object",
            "properties": {"a": {"type": ["string", "null"]}},
            "required": ["a"],
            "additionalProperties": false,
        });
        let schema = json!({
            "anyOf": [object(), {"type": "string"}],
            "oneOf": [object()],
            "allOf": [object()],
            "$defs": {"x": object()},
            "definitions": {"y": object()},
            "prefixItems": [object()],
            "items": object(),
            "additionalProperties": object(),
            "not": object(),
        });
        let out = strict_schema(&schema);
        for pointer in [
            "/anyOf/0",
            "/oneOf/0",
            "/allOf/0",
            "/$defs/x",
            "/definitions/y",
            "/prefixItems/0",
            "/items",
            "/additionalProperties",
        ] {
            assert_eq!(out.pointer(pointer), Some(&strict), "{pointer}");
        }
        assert_eq!(out["anyOf"][1], json!({"type": "string"}));
        // `not` is no schema the answer fits: left as it is.
        assert_eq!(out["not"], object());
        // Items as a list (older drafts).
        let out = strict_schema(&json!({"type": "array", "items": [object(), object()]}));
        assert_eq!(out["items"], json!([strict, strict]));
        // Not schemas at all: unchanged.
        for odd in [json!(true), json!(3), json!({"properties": 3})] {
            assert_eq!(strict_schema(&odd), odd);
        }
    }

    /// `{"type":"object","properties":{"a": <inner>},"required":["a"]}`, `levels` times
    /// around `{"type":"string"}`, built without recursion.
    fn nested(levels: usize) -> Value {
        let mut schema = json!({"type": "string"});
        for _ in 0..levels {
            // Not `json!`, which would copy `schema` whole each time.
            let mut properties = Map::new();
            properties.insert("a".into(), schema);
            let mut object = Map::new();
            object.insert("type".into(), "object".into());
            object.insert("properties".into(), properties.into());
            object.insert("required".into(), json!(["a"]));
            schema = object.into();
        }
        schema
    }

    /// Drops a value without recursion (the derived drop recurses as deep as it is nested).
    fn dismantle(value: Value) {
        let mut stack = vec![value];
        while let Some(mut v) = stack.pop() {
            match &mut v {
                Value::Array(items) => stack.append(items),
                Value::Object(map) => stack.extend(std::mem::take(map).into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }

    #[test]
    fn deep_copy_copies_exactly() {
        let values = [
            json!(null),
            json!("s"),
            json!([]),
            json!({}),
            json!({"a": [1, {"b": [[], {}, null, true, 2.5, "x"]}], "c": {"d": {"e": -1}}}),
            json!([[[["deep"]]], {"k": [{}]}]),
        ];
        for value in values {
            assert_eq!(deep_copy(&value), value);
        }
        let deep = nested(10_000);
        let copy = deep_copy(&deep);
        let (mut a, mut b, mut levels) = (&deep, &copy, 0);
        while let (Some(x), Some(y)) = (a.pointer("/properties/a"), b.pointer("/properties/a")) {
            assert_eq!(a["required"], b["required"]);
            (a, b, levels) = (x, y, levels + 1);
        }
        assert_eq!(
            (levels, a, b),
            (
                10_000,
                &json!({"type": "string"}),
                &json!({"type": "string"})
            )
        );
        dismantle(copy);
        dismantle(deep);
    }

    #[test]
    fn strict_schema_stops_at_its_depth_bound() {
        let schema = nested(100);
        let out = strict_schema(&schema);
        let (mut inside, mut original) = (&out, &schema);
        let mut strict_levels = 0;
        while inside.get("properties").is_some() {
            if inside.get("additionalProperties") == Some(&json!(false)) {
                strict_levels += 1;
            } else {
                // Below the bound, the schema is the tenant's own.
                assert_eq!(inside, original);
                break;
            }
            inside = &inside["properties"]["a"];
            original = &original["properties"]["a"];
        }
        assert_eq!(strict_levels, MAX_SCHEMA_DEPTH);
    }

    #[test]
    fn a_hostile_schema_neither_overflows_nor_lingers() {
        // On a small stack: recursion once per level would overflow it.
        let worker = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                let schema = nested(100_000);
                let start = std::time::Instant::now();
                let out = strict_schema(&schema);
                let took = start.elapsed();
                assert_eq!(out["additionalProperties"], false);
                dismantle(out);
                dismantle(schema);
                // A wide one: many optional properties and many names in `required`.
                let names: Vec<String> = (0..100_000).map(|i| format!("p{i}")).collect();
                let properties: Map<String, Value> = names
                    .iter()
                    .map(|n| (n.clone(), json!({"type": "string"})))
                    .collect();
                let wide = json!({"type": "object", "properties": properties, "required": names[..50_000]});
                let start = std::time::Instant::now();
                let out = strict_schema(&wide);
                let took = took + start.elapsed();
                assert_eq!(out["required"].as_array().map(Vec::len), Some(100_000));
                took
            })
            .expect("the test thread starts");
        let took = worker.join().expect("no stack overflow");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    fn answer(message: Value, finish_reason: &str) -> Value {
        json!({
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        })
    }

    #[test]
    fn parses_a_text_answer() {
        let reply = OpenAi
            .parse(&answer(
                json!({"role": "assistant", "content": "Hello"}),
                "stop",
            ))
            .unwrap();
        assert_eq!(
            reply,
            Reply {
                model: "gpt-4o-2024-08-06".into(),
                text: "Hello".into(),
                tool_calls: vec![],
                finish_reason: "stop".into(),
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                },
            }
        );
        // Content as parts: the text parts, joined.
        let parts = json!({"role": "assistant", "content": [
            {"type": "text", "text": "Hel"},
            {"type": "refusal", "refusal": "no"},
            {"type": "text", "text": "lo"},
        ]});
        assert_eq!(OpenAi.parse(&answer(parts, "stop")).unwrap().text, "Hello");
        // No content, no usage, no model: empty and zero.
        let bare = json!({"choices": [{"message": {"role": "assistant", "content": null}}]});
        let reply = OpenAi.parse(&bare).unwrap();
        assert_eq!(
            (reply.model.as_str(), reply.text.as_str(), reply.usage),
            ("", "", Usage::default())
        );
        assert_eq!(reply.finish_reason, "stop");
    }

    #[test]
    fn parses_tool_calls() {
        let calls = json!([
            {"id": "call_a", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            // Not JSON, and JSON but not an object: kept as the raw text.
            {"id": "call_b", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\": Rome"}},
            {"id": "call_c", "type": "function",
             "function": {"name": "weather", "arguments": "[1, 2]"}},
            // No id: one of its own, not one another call has.
            {"id": "", "type": "function", "function": {"name": "now", "arguments": ""}},
            {"id": "call_0", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            {"type": "function", "function": {"name": "now", "arguments": {"tz": "UTC"}}},
        ]);
        let reply = OpenAi
            .parse(&answer(
                json!({"role": "assistant", "content": null, "tool_calls": calls}),
                "tool_calls",
            ))
            .unwrap();
        let expected = |id: &str, name: &str, arguments: Value| Block::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments,
        };
        assert_eq!(
            reply.tool_calls,
            [
                expected("call_a", "weather", json!({"city": "Paris"})),
                expected("call_b", "weather", json!("{\"city\": Rome")),
                expected("call_c", "weather", json!("[1, 2]")),
                expected("call_1", "now", json!({})),
                expected("call_0", "now", json!({})),
                expected("call_2", "now", json!({"tz": "UTC"})),
            ]
        );
        assert_eq!(
            (reply.text.as_str(), reply.finish_reason.as_str()),
            ("", "tool_calls")
        );
        // The raw text goes back to the model as it wrote it.
        let body = OpenAi.body(&request(&[reply.message()], &[]));
        assert_eq!(
            body["messages"][0]["tool_calls"][1]["function"]["arguments"],
            "{\"city\": Rome"
        );
    }

    #[test]
    fn parses_a_legacy_function_call() {
        let message = json!({"role": "assistant", "content": null,
            "function_call": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}});
        let reply = OpenAi.parse(&answer(message, "function_call")).unwrap();
        assert_eq!(reply.finish_reason, "tool_calls");
        assert_eq!(
            reply.tool_calls,
            [Block::ToolCall {
                id: "call_0".into(),
                name: "weather".into(),
                arguments: json!({"city": "Oslo"}),
            }]
        );
    }

    #[test]
    fn finish_reasons_are_normalized() {
        let cases = [
            (Some("stop"), "stop"),
            (Some("tool_calls"), "tool_calls"),
            (Some("length"), "length"),
            (Some("content_filter"), "content_filter"),
            (Some("function_call"), "tool_calls"),
            (Some("eos"), "eos"),
            (None, "stop"),
        ];
        for (given, normalized) in cases {
            let mut body = answer(json!({"role": "assistant", "content": "x"}), "");
            body["choices"][0]["finish_reason"] = given.map_or(Value::Null, Value::from);
            let reply = OpenAi.parse(&body).unwrap();
            assert_eq!(reply.finish_reason, normalized, "{given:?}");
        }
        // Left out beside calls: they are why it stopped.
        let body = json!({"choices": [{"message": {"tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "{}"}},
        ]}}]});
        assert_eq!(OpenAi.parse(&body).unwrap().finish_reason, "tool_calls");
    }

    #[test]
    fn malformed_answers_say_what_is_missing() {
        let cases = [
            (json!({}), "the answer has no choices"),
            (json!({"choices": {}}), "the answer has no choices"),
            (json!({"choices": []}), "the answer's choices are empty"),
            (
                json!({"choices": [{}]}),
                "the answer has no choices[0].message",
            ),
            (
                json!({"choices": [{"message": {"content": 3}}]}),
                "the answer's choices[0].message.content is not text",
            ),
            (
                json!({"choices": [{"message": {"tool_calls": {}}}]}),
                "the answer's choices[0].message.tool_calls is not a list",
            ),
            (
                json!({"choices": [{"message": {"tool_calls": [{"id": "c"}]}}]}),
                "the answer's choices[0].message.tool_calls[0] has no function",
            ),
            (
                json!({"choices": [{"message": {"tool_calls": [
                    {"id": "c", "function": {"name": "f"}},
                    {"id": "d", "function": {"arguments": "{}"}},
                ]}}]}),
                "the answer's choices[0].message.tool_calls[1].function has no name",
            ),
        ];
        for (body, error) in cases {
            assert_eq!(OpenAi.parse(&body), Err(error.to_owned()), "{body}");
        }
    }

    #[test]
    fn headers_carry_the_key_and_the_organization() {
        let fields = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let auth = ("Authorization".to_owned(), "Bearer sk-1".to_owned());
        let org = |o: &str| ("OpenAI-Organization".to_owned(), o.to_owned());
        let cases = [
            (fields(&[("api_key", "sk-1")]), vec![auth.clone()]),
            (
                fields(&[("api_key", "sk-1"), ("org_id", "org-a")]),
                vec![auth.clone(), org("org-a")],
            ),
            (
                fields(&[("api_key", "sk-1"), ("organization", "org-b")]),
                vec![auth.clone(), org("org-b")],
            ),
            (
                fields(&[
                    ("api_key", "sk-1"),
                    ("org_id", "org-a"),
                    ("organization", "org-b"),
                ]),
                vec![auth.clone(), org("org-a")],
            ),
            (
                fields(&[("api_key", "sk-1"), ("organization", ""), ("base_url", "x")]),
                vec![auth.clone()],
            ),
        ];
        for (fields, headers) in cases {
            assert_eq!(OpenAi.headers(&fields), Ok(headers), "{fields:?}");
        }
        for fields in [
            fields(&[]),
            fields(&[("api_key", "")]),
            fields(&[("token", "t")]),
        ] {
            assert_eq!(
                OpenAi.headers(&fields),
                Err("the credential has no api_key field".to_owned())
            );
        }
        assert_eq!(OpenAi.path(), "/chat/completions");
    }

    #[test]
    fn error_messages_come_from_the_error_body() {
        let cases = [
            (
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
                Some("Incorrect API key provided"),
            ),
            (
                json!({"error": "model overloaded"}),
                Some("model overloaded"),
            ),
            (json!({"error": {"code": 500}}), None),
            (json!({"message": "no"}), None),
            (json!("text"), None),
        ];
        for (body, message) in cases {
            assert_eq!(OpenAi.error_message(&body).as_deref(), message, "{body}");
        }
    }
}
