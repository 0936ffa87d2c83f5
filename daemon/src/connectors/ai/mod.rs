//! `ai/completion`: a model call with durable tool use, on the OpenAI and Anthropic wire
//! formats.

pub mod anthropic;
pub mod openai;
pub mod wire;
