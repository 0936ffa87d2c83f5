//! A fake LLM server speaking the OpenAI Chat Completions and Anthropic Messages wire
//! formats, with scripted answers: for examples and manual tests of `ai/completion`.
//!
//! ```text
//! cargo run -p mantle-integration --bin fake-llm -- [--port N] [--script FILE]
//! ```
//!
//! FILE maps each model to its turns (see `mantle_integration::fake_llm::parse_script`):
//!
//! ```json
//! {
//!   "gpt-test": [
//!     {"tool_calls": [{"name": "lookup", "arguments": {"q": "rust"}}]},
//!     {"text": "Rust is a language.", "usage": {"input_tokens": 120, "output_tokens": 8}}
//!   ],
//!   "claude-test": ["Hello!"]
//! }
//! ```
//!
//! Prints `fake-llm listening on http://127.0.0.1:PORT` on stdout, then serves until killed,
//! logging one line per call to stderr. OpenAI clients use the base URL `{url}/v1`, Anthropic
//! clients `{url}`; `{url}/echo/...` echoes any request.

use std::io::Write;

use anyhow::Result;
use mantle_integration::fake_llm::{FakeLlm, load_script, parse_args};

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("fake-llm: {err:#}");
        std::process::exit(2);
    }
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (port, script) = parse_args(&args)?;
    let script = script.as_deref().map(load_script).transpose()?;
    let fake = FakeLlm::bind(port).await?;
    fake.log_to_stderr();
    if let Some(script) = script {
        for (model, turns) in &script {
            eprintln!("fake-llm: model {model:?}: {} turn(s)", turns.len());
        }
        fake.script_all(script);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "fake-llm listening on {}", fake.url())?;
    stdout.flush()?;
    drop(stdout);
    std::future::pending::<()>().await;
    Ok(())
}
