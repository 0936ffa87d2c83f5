//! The fake LLM server of the `ai/completion` tests: both wire formats, turn selection by
//! assistant-message count, replays, errors, auth, delays, `/echo`, and the binary's script.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use mantle_integration::fake_llm::{
    FakeCall, FakeLlm, Provider, Turn, Usage, parse_args, parse_script,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP answer: status and body (JSON, or `Null` when not JSON).
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

async fn read_response(stream: &mut TcpStream) -> Result<Resp> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = std::str::from_utf8(&raw[..split])?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?
        .parse()?;
    let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    Ok(Resp { status, body })
}

/// Sends one request over a fresh connection and reads the answer.
async fn send_raw(addr: SocketAddr, request: Vec<u8>) -> Result<Resp> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&request).await?;
        read_response(&mut stream).await
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .context("request timed out")?
}

async fn send(
    fake: &FakeLlm,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    send_raw(fake.addr(), request_bytes(method, path, headers, body))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

async fn post(fake: &FakeLlm, path: &str, body: &Value) -> Resp {
    send(fake, "POST", path, &[], &body.to_string()).await
}

/// Request headers of a test case.
type Headers<'a> = &'a [(&'a str, &'a str)];

const OPENAI: &str = "/v1/chat/completions";
const ANTHROPIC: &str = "/v1/messages";

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// The OpenAI body without `created` (the only field that changes between replays).
fn without_created(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("created");
    body
}

#[tokio::test]
async fn openai_text_answer_has_the_chat_completions_shape() {
    let fake = FakeLlm::start().await;
    assert_eq!(fake.openai_base_url(), format!("{}/v1", fake.url()));
    fake.script("gpt-a", vec![Turn::text("Hello there.").usage(7, 3)]);

    let request = json!({
        "model": "gpt-a",
        "messages": [{"role": "system", "content": "Be brief."}, user("Hi")],
    });
    let resp = post(&fake, OPENAI, &request).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let created = resp.body["created"].as_u64().expect("created is a number");
    assert!(created > 1_700_000_000, "created {created}");
    assert_eq!(
        without_created(resp.body),
        json!({
            "id": "chatcmpl-fake-0",
            "object": "chat.completion",
            "model": "gpt-a",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there."},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        })
    );

    let calls = fake.calls_for("gpt-a");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.provider, Provider::OpenAi);
    assert_eq!((call.method.as_str(), call.path.as_str()), ("POST", OPENAI));
    assert_eq!((call.turn, call.status), (0, 200));
    assert_eq!(call.body, request);
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert!(!call.closed_by_client);
    assert_eq!(fake.count("gpt-a"), 1);
    assert_eq!(fake.count("other"), 0);
}

#[tokio::test]
async fn anthropic_text_answer_has_the_messages_shape() {
    let fake = FakeLlm::start().await;
    fake.script("claude-a", vec![Turn::text("Bonjour.")]);

    let resp = post(
        &fake,
        ANTHROPIC,
        &json!({"model": "claude-a", "max_tokens": 100, "system": "Be brief.", "messages": [user("Hi")]}),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.body,
        json!({
            "id": "msg_fake_0",
            "type": "message",
            "role": "assistant",
            "model": "claude-a",
            "content": [{"type": "text", "text": "Bonjour."}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        })
    );
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].provider, Provider::Anthropic);
    assert_eq!(calls[0].model, "claude-a");
    // Any path ending in /messages is Anthropic.
    let resp = post(
        &fake,
        "/proxy/anthropic/v1/messages",
        &json!({"model": "claude-a", "messages": [user("Hi")]}),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(fake.calls_for("claude-a")[1].provider, Provider::Anthropic);
}

#[tokio::test]
async fn openai_tool_calls_then_the_turn_chosen_by_assistant_messages() {
    let fake = FakeLlm::start().await;
    fake.script(
        "gpt-tools",
        vec![
            Turn::tools(vec![
                FakeCall::new("lookup", json!({"q": "rust"})),
                FakeCall::raw("broken", "{not json"),
            ]),
            Turn::text("Done.").usage(30, 2),
            Turn::text("Last."),
        ],
    );

    let first = json!({"model": "gpt-tools", "messages": [user("Look it up")]});
    let resp = post(&fake, "/any/prefix/chat/completions", &first).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body["id"], "chatcmpl-fake-0");
    let choice = &resp.body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([
            {"id": "call_0_0", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"rust\"}"}},
            {"id": "call_0_1", "type": "function", "function": {"name": "broken", "arguments": "{not json"}},
        ])
    );

    // The conversation continues: one assistant message → the second turn.
    let second = json!({
        "model": "gpt-tools",
        "messages": [
            user("Look it up"),
            {"role": "assistant", "content": null, "tool_calls": choice["message"]["tool_calls"]},
            {"role": "tool", "tool_call_id": "call_0_0", "content": "{\"hits\":1}"},
            {"role": "tool", "tool_call_id": "call_0_1", "content": "invalid arguments"},
        ],
    });
    let resp = post(&fake, OPENAI, &second).await;
    assert_eq!(resp.body["id"], "chatcmpl-fake-1", "{resp:?}");
    assert_eq!(resp.body["choices"][0]["message"]["content"], "Done.");
    assert!(
        resp.body["choices"][0]["message"]
            .get("tool_calls")
            .is_none()
    );
    assert_eq!(resp.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(resp.body["usage"]["prompt_tokens"], 30);

    // Past the end of the script: the last turn.
    let many: Vec<Value> = (0..5)
        .flat_map(|_| [user("again"), json!({"role": "assistant", "content": "x"})])
        .collect();
    let resp = post(
        &fake,
        OPENAI,
        &json!({"model": "gpt-tools", "messages": many}),
    )
    .await;
    assert_eq!(resp.body["choices"][0]["message"]["content"], "Last.");

    let turns: Vec<usize> = fake.calls_for("gpt-tools").iter().map(|c| c.turn).collect();
    assert_eq!(turns, [0, 1, 5]);
}

#[tokio::test]
async fn anthropic_tool_use_then_the_next_turn() {
    let fake = FakeLlm::start().await;
    fake.script(
        "claude-tools",
        vec![
            Turn::tools(vec![
                FakeCall::new("lookup", json!({"q": "rust"})),
                FakeCall::new("weather", json!({"city": "Oslo"})),
            ])
            .with_text("Let me check."),
            Turn::text("It is sunny.").finish_reason("max_tokens"),
        ],
    );
    let resp = post(
        &fake,
        ANTHROPIC,
        &json!({"model": "claude-tools", "messages": [user("Weather?")]}),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body["stop_reason"], "tool_use");
    assert_eq!(
        resp.body["content"],
        json!([
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_0_0", "name": "lookup", "input": {"q": "rust"}},
            {"type": "tool_use", "id": "toolu_0_1", "name": "weather", "input": {"city": "Oslo"}},
        ])
    );

    let resp = post(
        &fake,
        ANTHROPIC,
        &json!({"model": "claude-tools", "messages": [
            user("Weather?"),
            {"role": "assistant", "content": resp.body["content"]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0_0", "content": "1 hit"},
                {"type": "tool_result", "tool_use_id": "toolu_0_1", "content": "sunny"},
            ]},
        ]}),
    )
    .await;
    assert_eq!(resp.body["id"], "msg_fake_1", "{resp:?}");
    assert_eq!(
        resp.body["content"],
        json!([{"type": "text", "text": "It is sunny."}])
    );
    assert_eq!(resp.body["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn a_replayed_request_gets_the_same_answer() {
    let fake = FakeLlm::start().await;
    let turns = vec![
        Turn::tools(vec![FakeCall::new("lookup", json!({"q": 1}))]),
        Turn::tools(vec![FakeCall::new("lookup", json!({"q": 2}))]),
        Turn::text("end"),
    ];
    fake.script("m", turns);

    let request = json!({"model": "m", "messages": [
        user("go"),
        {"role": "assistant", "content": "calling"},
        user("result"),
    ]});
    // Another conversation in between must not shift the answer.
    let a = post(&fake, OPENAI, &request).await;
    post(
        &fake,
        OPENAI,
        &json!({"model": "m", "messages": [user("other")]}),
    )
    .await;
    let b = post(&fake, OPENAI, &request).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_1_0"
    );
    assert_eq!(
        a.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"q\":2}"
    );
    assert_eq!(without_created(a.body), without_created(b.body));

    let a = post(&fake, ANTHROPIC, &request).await;
    post(
        &fake,
        ANTHROPIC,
        &json!({"model": "m", "messages": [user("other")]}),
    )
    .await;
    let b = post(&fake, ANTHROPIC, &request).await;
    assert_eq!(a.body["content"][0]["id"], "toolu_1_0", "{a:?}");
    assert_eq!(a.body, b.body);
    assert_eq!(fake.count("m"), 6);
}

#[tokio::test]
async fn an_unscripted_model_is_404_in_the_providers_format() {
    let fake = FakeLlm::start().await;
    fake.script("known", vec![Turn::text("hi")]);

    let resp = post(
        &fake,
        OPENAI,
        &json!({"model": "nope", "messages": [user("hi")]}),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!(resp.body["error"]["type"], "not_found");
    assert!(
        resp.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{resp:?}"
    );
    assert!(resp.body.get("type").is_none());

    let resp = post(
        &fake,
        ANTHROPIC,
        &json!({"model": "nope", "messages": [user("hi")]}),
    )
    .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!(resp.body["type"], "error");
    assert_eq!(resp.body["error"]["type"], "not_found");

    let statuses: Vec<u16> = fake.calls_for("nope").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [404, 404]);

    // Neither an LLM path nor /echo.
    let resp = post(&fake, "/v1/models", &json!({})).await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!(fake.calls().last().unwrap().provider, Provider::Other);
}

#[tokio::test]
async fn require_key_answers_401_without_the_right_key() {
    let fake = FakeLlm::start().await;
    fake.script("m", vec![Turn::text("ok")]);
    fake.require_key("sk-test");
    let body = json!({"model": "m", "messages": [user("hi")]}).to_string();

    let cases: [(&str, Headers, u16); 6] = [
        (OPENAI, &[], 401),
        (OPENAI, &[("Authorization", "Bearer sk-wrong")], 401),
        (OPENAI, &[("x-api-key", "sk-test")], 401),
        (OPENAI, &[("Authorization", "Bearer sk-test")], 200),
        (ANTHROPIC, &[("Authorization", "Bearer sk-test")], 401),
        (ANTHROPIC, &[("X-Api-Key", "sk-test")], 200),
    ];
    for (path, headers, expected) in cases {
        let resp = send(&fake, "POST", path, headers, &body).await;
        assert_eq!(resp.status, expected, "{path} {headers:?}: {resp:?}");
        if expected == 401 {
            let error = if path == ANTHROPIC {
                assert_eq!(resp.body["type"], "error", "{resp:?}");
                &resp.body["error"]
            } else {
                &resp.body["error"]
            };
            assert_eq!(error["type"], "authentication_error", "{resp:?}");
        }
    }
    let statuses: Vec<u16> = fake.calls_for("m").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [401, 401, 401, 200, 401, 200]);
    assert_eq!(fake.calls_for("m")[5].header("x-api-key"), Some("sk-test"));
}

#[tokio::test]
async fn a_scripted_503_answers_the_providers_error_body() {
    let fake = FakeLlm::start().await;
    fake.script(
        "flaky",
        vec![Turn::text("unused").status(503), Turn::text("recovered")],
    );
    fake.script("overloaded", vec![Turn::failure(529, "Overloaded")]);

    let resp = post(
        &fake,
        OPENAI,
        &json!({"model": "flaky", "messages": [user("hi")]}),
    )
    .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        resp.body,
        json!({"error": {"type": "api_error", "message": "scripted failure"}})
    );
    let resp = post(
        &fake,
        ANTHROPIC,
        &json!({"model": "flaky", "messages": [user("hi")]}),
    )
    .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        resp.body,
        json!({"type": "error", "error": {"type": "api_error", "message": "scripted failure"}})
    );
    let resp = post(
        &fake,
        ANTHROPIC,
        &json!({"model": "overloaded", "messages": [user("hi")]}),
    )
    .await;
    assert_eq!(resp.status, 529, "{resp:?}");
    assert_eq!(
        resp.body,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );

    // The next turn of the same model answers normally.
    let resp = post(
        &fake,
        OPENAI,
        &json!({"model": "flaky", "messages": [user("hi"), {"role": "assistant", "content": "?"}, user("again")]}),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body["choices"][0]["message"]["content"], "recovered");
    let statuses: Vec<u16> = fake.calls_for("flaky").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
}

#[tokio::test]
async fn a_delayed_answer_notices_the_client_closing() {
    let fake = FakeLlm::start().await;
    fake.script(
        "slow",
        vec![Turn::text("late").delay(Duration::from_secs(30))],
    );
    fake.script(
        "held",
        vec![Turn::text("on time").delay(Duration::from_millis(300))],
    );

    // Held but awaited: answered after the delay, not marked closed.
    let started = Instant::now();
    let resp = post(
        &fake,
        OPENAI,
        &json!({"model": "held", "messages": [user("hi")]}),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(resp.body["choices"][0]["message"]["content"], "on time");
    assert!(!fake.calls_for("held")[0].closed_by_client);

    // The client gives up while the answer is held.
    let mut stream = TcpStream::connect(fake.addr()).await.unwrap();
    let body = json!({"model": "slow", "messages": [user("hi")]}).to_string();
    stream
        .write_all(&request_bytes("POST", ANTHROPIC, &[], &body))
        .await
        .unwrap();
    assert!(
        fake.wait_for_calls("slow", 1, Duration::from_secs(5)).await,
        "the request was not recorded"
    );
    assert!(!fake.calls_for("slow")[0].closed_by_client);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fake.calls_for("slow")[0].closed_by_client {
        assert!(
            Instant::now() < deadline,
            "the client's close was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let call = &fake.calls_for("slow")[0];
    assert_eq!((call.provider, call.status), (Provider::Anthropic, 200));
}

#[tokio::test]
async fn echo_answers_and_is_recorded() {
    let fake = FakeLlm::start().await;

    let resp = send(
        &fake,
        "POST",
        "/echo/hook/a?x=1&y=2",
        &[],
        r#"{"k": [1, 2]}"#,
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.body,
        json!({"method": "POST", "path": "/echo/hook/a", "query": "x=1&y=2", "body": {"k": [1, 2]}})
    );
    let resp = send(&fake, "PUT", "/echo/hook/b", &[], "plain text").await;
    assert_eq!(resp.body["body"], "plain text", "{resp:?}");
    let resp = send(&fake, "GET", "/echo", &[], "").await;
    assert_eq!(
        resp.body,
        json!({"method": "GET", "path": "/echo", "query": "", "body": null})
    );
    // Not an echo path, nor an LLM one: 404, recorded, not counted.
    let resp = send(&fake, "GET", "/echoes", &[], "").await;
    assert_eq!(resp.status, 404, "{resp:?}");
    // An echo path that ends like an LLM path is still an echo.
    let resp = post(&fake, "/echo/v1/messages", &json!({"model": "m"})).await;
    assert_eq!(resp.body["path"], "/echo/v1/messages", "{resp:?}");

    assert_eq!(fake.echo_count("/echo/hook"), 2);
    assert_eq!(fake.echo_count("/echo/hook/a"), 1);
    assert_eq!(fake.echo_count("/echo"), 4);
    assert_eq!(fake.calls().len(), 5);
    assert!(fake.calls().iter().all(|c| c.provider == Provider::Other));
    let hook = &fake.echo_calls("/echo/hook/a")[0];
    assert_eq!(hook.body, json!({"k": [1, 2]}));
    assert_eq!(hook.query, "x=1&y=2");
    assert_eq!(fake.echo_calls("/echo/hook/b")[0].raw_body, "plain text");
    assert_eq!(fake.count("m"), 0);
}

#[tokio::test]
async fn large_and_chunked_bodies_are_read() {
    let fake = FakeLlm::start().await;
    fake.script("big", vec![Turn::text("read it")]);

    let big = "x".repeat(3 << 20);
    let resp = post(
        &fake,
        OPENAI,
        &json!({"model": "big", "messages": [user(&big)]}),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        fake.calls_for("big")[0].messages()[0]["content"]
            .as_str()
            .unwrap()
            .len(),
        3 << 20
    );

    // Chunked.
    let body = json!({"model": "big", "messages": [user("chunked")]}).to_string();
    let (a, b) = body.split_at(10);
    let request = format!(
        "POST {OPENAI} HTTP/1.1\r\nHost: fake\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let resp = send_raw(fake.addr(), request.into_bytes()).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(fake.calls_for("big")[1].messages()[0]["content"], "chunked");

    // Over 16 MiB: 413 without reading the body.
    let request = format!(
        "POST {OPENAI} HTTP/1.1\r\nHost: fake\r\nContent-Length: {}\r\n\r\n",
        (16 << 20) + 1
    );
    let resp = send_raw(fake.addr(), request.into_bytes()).await.unwrap();
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.body["error"]["type"], "request_too_large");
    assert_eq!(fake.calls().last().unwrap().status, 413);
}

const SCRIPT: &str = r#"{
  "gpt-test": [
    {"tool_calls": [{"name": "lookup", "arguments": {"q": "rust"}},
                    {"name": "broken", "raw_arguments": "{oops"}]},
    {"text": "Rust is a language.", "usage": {"input_tokens": 120, "output_tokens": 8}}
  ],
  "claude-test": ["Hello!"],
  "flaky": [{"status": 503, "error": "overloaded", "delay_ms": 250, "finish_reason": "x"}]
}"#;

#[test]
fn the_script_file_parses() {
    let script = parse_script(SCRIPT).unwrap();
    assert_eq!(
        script.keys().collect::<Vec<_>>(),
        ["claude-test", "flaky", "gpt-test"]
    );
    assert_eq!(
        script["gpt-test"],
        [
            Turn::tools(vec![
                FakeCall::new("lookup", json!({"q": "rust"})),
                FakeCall::raw("broken", "{oops"),
            ]),
            Turn::text("Rust is a language.").usage(120, 8),
        ]
    );
    assert_eq!(script["claude-test"], [Turn::text("Hello!")]);
    assert_eq!(
        script["flaky"],
        [Turn::failure(503, "overloaded")
            .delay(Duration::from_millis(250))
            .finish_reason("x")]
    );
    assert_eq!(
        script["claude-test"][0].usage,
        Usage {
            input_tokens: 10,
            output_tokens: 5
        }
    );
    assert_eq!(script["claude-test"][0].status, 200);

    for (bad, why) in [
        (r#"["a"]"#, "must be a JSON object"),
        (r#"{"m": "a"}"#, "expected a list of turns"),
        (r#"{"m": []}"#, "at least one turn"),
        (r#"{"m": [{"txt": "typo"}]}"#, "unknown field"),
        (r#"{"m": [{"status": "x"}]}"#, "invalid type"),
        ("{", "not valid JSON"),
    ] {
        let err = format!("{:#}", parse_script(bad).unwrap_err());
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[test]
fn the_binary_arguments_parse() {
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(parse_args(&args(&[])).unwrap(), (0, None));
    assert_eq!(
        parse_args(&args(&["--port", "8089", "--script", "s.json"])).unwrap(),
        (8089, Some("s.json".into()))
    );
    assert_eq!(parse_args(&args(&["--port=7"])).unwrap(), (7, None));
    assert!(parse_args(&args(&["--port"])).is_err());
    assert!(parse_args(&args(&["--port", "x"])).is_err());
    assert!(parse_args(&args(&["--verbose"])).is_err());
}

#[tokio::test]
async fn the_binary_serves_a_script_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(&script, SCRIPT).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fake-llm"))
        .arg("--script")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .expect("no listening line")
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("fake-llm listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr: SocketAddr = url.parse().unwrap();

    let body = json!({"model": "claude-test", "messages": [user("hi")]}).to_string();
    let resp = send_raw(addr, request_bytes("POST", ANTHROPIC, &[], &body))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body["content"][0]["text"], "Hello!");

    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"anthropic POST /v1/messages model="claude-test" turn=0 status=200"#),
        "stderr: {stderr}"
    );
}
