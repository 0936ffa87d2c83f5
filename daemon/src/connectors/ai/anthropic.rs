//! The Anthropic Messages wire format (`POST {base}/v1/messages`, the base URL being
//! `https://api.anthropic.com`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::wire::{Block, Message, Reply, Request, Role, ToolChoice, Usage, WireFormat};

/// The API version every request names.
const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the request sets none: the API requires one.
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Messages API.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anthropic;

impl WireFormat for Anthropic {
    fn path(&self) -> &'static str {
        "/v1/messages"
    }

    fn headers(&self, fields: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
        let api_key = fields
            .get("api_key")
            .filter(|k| !k.is_empty())
            .ok_or("the credential has no api_key field")?;
        Ok(vec![
            ("x-api-key".to_owned(), api_key.clone()),
            ("anthropic-version".to_owned(), API_VERSION.to_owned()),
        ])
    }

    fn body(&self, request: &Request<'_>) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), request.model.into());
        body.insert(
            "max_tokens".into(),
            request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into(),
        );
        if let Some(system) = system(request) {
            body.insert("system".into(), system.into());
        }
        body.insert("messages".into(), messages(request.messages).into());
        if !request.tools.is_empty() {
            let tools = request.tools.iter().map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.input_schema,
                })
            });
            body.insert("tools".into(), tools.collect());
            if request.tool_choice == ToolChoice::None {
                body.insert("tool_choice".into(), json!({"type": "none"}));
            }
        }
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), temperature.into());
        }
        Value::Object(body)
    }

    fn parse(&self, body: &Value) -> Result<Reply, String> {
        let blocks = body
            .get("content")
            .and_then(Value::as_array)
            .ok_or("the answer has no content")?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(
                    block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ),
                Some("tool_use") => {
                    let field = |name: &str| {
                        block
                            .get(name)
                            .and_then(Value::as_str)
                            .filter(|v| !v.is_empty())
                            .ok_or_else(|| format!("the answer's content[{i}] has no {name}"))
                    };
                    tool_calls.push(Block::ToolCall {
                        id: field("id")?.to_owned(),
                        name: field("name")?.to_owned(),
                        arguments: block
                            .get("input")
                            .filter(|input| !input.is_null())
                            .cloned()
                            .unwrap_or_else(|| Value::Object(Map::new())),
                    });
                }
                // Thinking and other blocks are not part of the answer.
                _ => {}
            }
        }
        let finish_reason = match body.get("stop_reason").and_then(Value::as_str) {
            Some("end_turn" | "stop_sequence") => "stop",
            Some("tool_use") => "tool_calls",
            Some("max_tokens") => "length",
            Some("refusal") => "content_filter",
            Some(other) => other,
            None if tool_calls.is_empty() => "stop",
            None => "tool_calls",
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
            finish_reason: finish_reason.to_owned(),
            usage: Usage {
                input_tokens: tokens("input_tokens"),
                output_tokens: tokens("output_tokens"),
            },
        })
    }

    fn error_message(&self, body: &Value) -> Option<String> {
        body.get("error")?
            .get("message")?
            .as_str()
            .map(str::to_owned)
    }
}

/// The `system` prompt: the request's, and with an output schema, the instruction to fit it
/// (the API has no structured output of its own; the answer is validated after).
fn system(request: &Request<'_>) -> Option<String> {
    let Some(schema) = request.output_schema else {
        return request.system.map(str::to_owned);
    };
    let instruction = format!(
        "Answer with only a JSON value that fits this JSON Schema, with no other text:\n{schema}"
    );
    Some(match request.system {
        Some(system) if !system.is_empty() => format!("{system}\n\n{instruction}"),
        _ => instruction,
    })
}

/// The `messages` of a request. The API wants the roles to alternate, so consecutive
/// messages of one role are merged; within a user message the tool results come first, as
/// it also wants. Empty text blocks, and messages left empty, are dropped: it refuses them.
fn messages(conversation: &[Message]) -> Vec<Value> {
    let mut out: Vec<(Role, Vec<Value>)> = Vec::new();
    for message in conversation {
        let blocks: Vec<Value> = message.content.iter().filter_map(block).collect();
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((role, content)) if *role == message.role => content.extend(blocks),
            _ => out.push((message.role, blocks)),
        }
    }
    out.into_iter()
        .map(|(role, mut content)| {
            let role = match role {
                Role::User => {
                    // Stable: the results keep their order, and so does the rest.
                    content.sort_by_key(|b| b["type"] != "tool_result");
                    "user"
                }
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": content})
        })
        .collect()
}

/// One content block; `None` for an empty text.
fn block(block: &Block) -> Option<Value> {
    Some(match block {
        Block::Text { text } if text.is_empty() => return None,
        Block::Text { text } => json!({"type": "text", "text": text}),
        Block::ToolCall {
            id,
            name,
            arguments,
        } => {
            // Arguments that did not parse are no input: the call is answered with an error.
            let input = match arguments {
                Value::Object(_) => arguments.clone(),
                _ => Value::Object(Map::new()),
            };
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Block::ToolResult {
            id,
            content,
            is_error,
            ..
        } => json!({
            "type": "tool_result",
            "tool_use_id": id,
            "content": content,
            "is_error": is_error,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::ai::wire::ToolDef;
    use crate::connectors::ai::wire::fixtures::*;

    fn request<'a>(messages: &'a [Message], tools: &'a [ToolDef]) -> Request<'a> {
        Request {
            model: "claude-sonnet-4-5",
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
        let messages = conversation("toolu");
        let tools = [weather_tool()];
        let body = Anthropic.body(&Request {
            system: Some("Be brief."),
            temperature: Some(0.2),
            max_tokens: Some(500),
            ..request(&messages, &tools)
        });
        let expected = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 500,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather",
                     "input": {"city": "Paris"}},
                    // Arguments that did not parse: no input.
                    {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": "{\"temp_c\":21}", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_2",
                     "content": "the arguments are not JSON", "is_error": true},
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_3", "name": "weather",
                     "input": {"city": "Rome"}},
                ]},
                // Two user messages in one; the result first.
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_3",
                     "content": "{\"temp_c\":24}", "is_error": false},
                    {"type": "text", "text": "Answer in one line."},
                    {"type": "text", "text": "In Celsius."},
                ]},
            ],
            "tools": [{
                "name": "weather",
                "description": "Current weather of a city.",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }],
            "temperature": 0.2,
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn roles_alternate_and_nothing_is_empty() {
        let messages = [
            Message::user_text("a"),
            message(Role::Assistant, vec![text("b")]),
            // Only an empty text: dropped, so the assistant messages around it merge.
            message(Role::User, vec![text("")]),
            // The empty text is dropped; arguments not an object are no input.
            message(Role::Assistant, vec![text(""), call("t", json!([1]))]),
            message(Role::Assistant, vec![]),
            Message::user_text("c"),
        ];
        let body = Anthropic.body(&request(&messages, &[]));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "b"},
                    {"type": "tool_use", "id": "t", "name": "weather", "input": {}},
                ]},
                {"role": "user", "content": [{"type": "text", "text": "c"}]},
            ])
        );
    }

    #[test]
    fn max_tokens_tool_choice_and_output_schema() {
        let messages = [Message::user_text("hi")];
        let tools = [weather_tool()];
        let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
        let instruction = "Answer with only a JSON value that fits this JSON Schema, with no \
            other text:\n{\"properties\":{\"answer\":{\"type\":\"string\"}},\"type\":\"object\"}";
        // Without max_tokens, the default; no system, no tools, nothing unset.
        assert_eq!(
            Anthropic.body(&Request {
                tool_choice: ToolChoice::None,
                ..request(&messages, &[])
            }),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            })
        );
        let body = Anthropic.body(&Request {
            tool_choice: ToolChoice::None,
            output_schema: Some(&schema),
            ..request(&messages, &tools)
        });
        assert_eq!(body["tool_choice"], json!({"type": "none"}));
        assert_eq!(body["system"], instruction);
        let body = Anthropic.body(&Request {
            system: Some("Be brief."),
            output_schema: Some(&schema),
            ..request(&messages, &tools)
        });
        assert_eq!(body["system"], format!("Be brief.\n\n{instruction}"));
        assert!(body.get("tool_choice").is_none(), "{body}");
    }

    fn answer(content: Value, stop_reason: &str) -> Value {
        json!({
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": 25, "output_tokens": 7},
        })
    }

    #[test]
    fn parses_a_text_answer() {
        let content = json!([
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "Hel"},
            {"type": "text", "text": "lo"},
        ]);
        let reply = Anthropic.parse(&answer(content, "end_turn")).unwrap();
        assert_eq!(
            reply,
            Reply {
                model: "claude-sonnet-4-5-20250929".into(),
                text: "Hello".into(),
                tool_calls: vec![],
                finish_reason: "stop".into(),
                usage: Usage {
                    input_tokens: 25,
                    output_tokens: 7,
                },
            }
        );
        // No usage, no model: zero and empty.
        let reply = Anthropic.parse(&json!({"content": []})).unwrap();
        assert_eq!(
            (reply.model.as_str(), reply.text.as_str(), reply.usage),
            ("", "", Usage::default())
        );
    }

    #[test]
    fn parses_tool_calls() {
        let content = json!([
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "now"},
        ]);
        let reply = Anthropic.parse(&answer(content, "tool_use")).unwrap();
        assert_eq!(reply.text, "Checking.");
        assert_eq!(reply.finish_reason, "tool_calls");
        assert_eq!(
            reply.tool_calls,
            [
                Block::ToolCall {
                    id: "toolu_1".into(),
                    name: "weather".into(),
                    arguments: json!({"city": "Paris"}),
                },
                Block::ToolCall {
                    id: "toolu_2".into(),
                    name: "now".into(),
                    arguments: json!({}),
                },
            ]
        );
        // Sent back as it came.
        let body = Anthropic.body(&request(&[reply.message()], &[]));
        assert_eq!(
            body["messages"][0]["content"][1]["input"],
            json!({"city": "Paris"})
        );
    }

    #[test]
    fn stop_reasons_are_normalized() {
        let cases = [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("tool_use"), "tool_calls"),
            (Some("max_tokens"), "length"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "pause_turn"),
            (None, "stop"),
        ];
        for (given, normalized) in cases {
            let mut body = answer(json!([{"type": "text", "text": "x"}]), "");
            body["stop_reason"] = given.map_or(Value::Null, Value::from);
            let reply = Anthropic.parse(&body).unwrap();
            assert_eq!(reply.finish_reason, normalized, "{given:?}");
        }
    }

    #[test]
    fn malformed_answers_say_what_is_missing() {
        let cases = [
            (json!({}), "the answer has no content"),
            (json!({"content": "hi"}), "the answer has no content"),
            (
                json!({"content": [{"type": "tool_use", "name": "f", "input": {}}]}),
                "the answer's content[0] has no id",
            ),
            (
                json!({"content": [
                    {"type": "text", "text": "x"},
                    {"type": "tool_use", "id": "t", "input": {}},
                ]}),
                "the answer's content[1] has no name",
            ),
        ];
        for (body, error) in cases {
            assert_eq!(Anthropic.parse(&body), Err(error.to_owned()), "{body}");
        }
    }

    #[test]
    fn headers_carry_the_key_and_the_version() {
        let fields = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            Anthropic.headers(&fields(&[("api_key", "sk-ant-1"), ("base_url", "x")])),
            Ok(vec![
                ("x-api-key".to_owned(), "sk-ant-1".to_owned()),
                ("anthropic-version".to_owned(), "2023-06-01".to_owned()),
            ])
        );
        for fields in [fields(&[]), fields(&[("api_key", "")])] {
            assert_eq!(
                Anthropic.headers(&fields),
                Err("the credential has no api_key field".to_owned())
            );
        }
        assert_eq!(Anthropic.path(), "/v1/messages");
    }

    #[test]
    fn error_messages_come_from_the_error_body() {
        let cases = [
            (
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                Some("Overloaded"),
            ),
            (json!({"error": {"type": "api_error"}}), None),
            (json!({"message": "no"}), None),
        ];
        for (body, message) in cases {
            assert_eq!(Anthropic.error_message(&body).as_deref(), message, "{body}");
        }
    }
}
