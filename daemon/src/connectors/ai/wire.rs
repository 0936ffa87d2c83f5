//! The conversation of an `ai/completion` step in a form of its own, apart from any
//! provider: what is checkpointed, and what each provider module turns into its wire format
//! (`openai`: Chat Completions; `anthropic`: Messages) and reads back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    /// The model asks for a tool (in an assistant message).
    ToolCall {
        id: String,
        name: String,
        /// The arguments as the model gave them: an object when they parsed as JSON, else
        /// the raw text as a string (which is sent back to the model as an error).
        arguments: Value,
    },
    /// A tool's answer (in a user message): `content` is the result as JSON text, or the
    /// error's message when `is_error`.
    ToolResult {
        id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

/// One message of the conversation (the system prompt is apart, in [`Request::system`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn user_text(text: impl Into<String>) -> Message {
        Message {
            role: Role::User,
            content: vec![Block::Text { text: text.into() }],
        }
    }
}

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
}

/// Whether the model may call tools in this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice {
    /// As it likes (the default when tools are given).
    Auto,
    /// Not at all: the final call after the round limit. The tools are still declared,
    /// since the conversation holds calls of them (Anthropic requires it).
    None,
}

/// One model call, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub model: &'a str,
    pub system: Option<&'a str>,
    pub messages: &'a [Message],
    pub tools: &'a [ToolDef],
    pub tool_choice: ToolChoice,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// JSON Schema the answer must fit: OpenAI gets its strict `response_format`; Anthropic
    /// gets an instruction in the system prompt (the answer is validated either way).
    pub output_schema: Option<&'a Value>,
}

/// Tokens one call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What the model answered, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The model that answered, as the provider names it.
    pub model: String,
    /// The answer's text blocks joined (empty when it only calls tools).
    pub text: String,
    /// Its tool calls, in order: [`Block::ToolCall`]s.
    pub tool_calls: Vec<Block>,
    /// Why it stopped, normalized: `stop`, `tool_calls`, `length`, `content_filter`, or the
    /// provider's own word for anything else.
    pub finish_reason: String,
    pub usage: Usage,
}

impl Reply {
    /// The assistant message this reply adds to the conversation.
    pub fn message(&self) -> Message {
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(Block::Text {
                text: self.text.clone(),
            });
        }
        content.extend(self.tool_calls.iter().cloned());
        Message {
            role: Role::Assistant,
            content,
        }
    }
}

/// A provider's wire format: the body and headers of a call, and how to read its answer.
pub trait WireFormat: Send + Sync {
    /// The path appended to the base URL (`/chat/completions`, `/v1/messages`).
    fn path(&self) -> &'static str;
    /// The request headers besides `Content-Type`, credentials included: `api_key` and, for
    /// OpenAI, `org_id` (or `organization`) from the secret's fields.
    fn headers(
        &self,
        fields: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, String>;
    /// The JSON body of `request`.
    fn body(&self, request: &Request<'_>) -> Value;
    /// Reads a successful (2xx) answer; `Err` says what is missing or malformed.
    fn parse(&self, body: &Value) -> Result<Reply, String>;
    /// The provider's error message in an error answer's body, if it has one.
    fn error_message(&self, body: &Value) -> Option<String>;
}

/// The conversation and tool the wire formats' tests encode.
#[cfg(test)]
pub mod fixtures {
    use serde_json::{Value, json};

    use super::{Block, Message, Role, ToolDef};

    pub fn call(id: &str, arguments: Value) -> Block {
        Block::ToolCall {
            id: id.into(),
            name: "weather".into(),
            arguments,
        }
    }

    pub fn result(id: &str, content: &str, is_error: bool) -> Block {
        Block::ToolResult {
            id: id.into(),
            name: "weather".into(),
            content: content.into(),
            is_error,
        }
    }

    pub fn text(text: &str) -> Block {
        Block::Text { text: text.into() }
    }

    pub fn message(role: Role, content: Vec<Block>) -> Message {
        Message { role, content }
    }

    /// A conversation of two tool rounds, one call's arguments not JSON, one result an
    /// error, the last user message mixing text and a result, and one more user message;
    /// tool call ids are `<prefix>_1` to `<prefix>_3`.
    pub fn conversation(prefix: &str) -> Vec<Message> {
        vec![
            Message::user_text("Weather in Paris and Rome?"),
            message(
                Role::Assistant,
                vec![
                    text("Checking both."),
                    call(&format!("{prefix}_1"), json!({"city": "Paris"})),
                    call(
                        &format!("{prefix}_2"),
                        Value::String("{\"city\": Rome".into()),
                    ),
                ],
            ),
            message(
                Role::User,
                vec![
                    result(&format!("{prefix}_1"), "{\"temp_c\":21}", false),
                    result(&format!("{prefix}_2"), "the arguments are not JSON", true),
                ],
            ),
            message(
                Role::Assistant,
                vec![call(&format!("{prefix}_3"), json!({"city": "Rome"}))],
            ),
            message(
                Role::User,
                vec![
                    text("Answer in one line."),
                    result(&format!("{prefix}_3"), "{\"temp_c\":24}", false),
                ],
            ),
            Message::user_text("In Celsius."),
        ]
    }

    pub fn weather_tool() -> ToolDef {
        ToolDef {
            name: "weather".into(),
            description: "Current weather of a city.".into(),
            input_schema: json!({
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            }),
        }
    }
}
