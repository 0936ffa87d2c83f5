//! `ai/completion` end to end, against the fake model server of `fake_llm`, on both wire
//! formats: plain and structured answers, tool loops (invalid arguments, failing tools, too
//! many calls, round exhaustion), budgets of the step, the workflow, the tenant and the
//! installation, the tenant's default credential, and a `kill -9` in the middle of a tool
//! loop on SQLite and PostgreSQL.
//!
//! Tools call the fake's `/echo/...` (counted) or a path it does not serve (404: a failing
//! tool), so the daemons run with `MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true`; the fake is an
//! allowed base URL (`MANTLE_AI_ALLOWED_BASE_URLS`) named by the secrets' `base_url`.

use std::time::Duration;

use mantle_integration::fake_llm::{FakeCall, FakeLlm, Turn};
use mantle_integration::reliability::*;
use mantle_integration::*;
use serde_json::{Value, json};

use pb::secret_service_client::SecretServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pb::{ExecutionStatus as Ex, StepStatus as St};

const WAIT: Duration = Duration::from_secs(60);
const PROVIDERS: [&str; 2] = ["openai", "anthropic"];

/// A daemon whose secrets `openai` and `anthropic` reach the fake.
struct Ai {
    daemon: Daemon,
    fake: FakeLlm,
    m: Mantle,
    opts: DaemonOptions,
    operator: String,
    _dir: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

async fn setup(database: Option<PgDatabase>, extra: &[(&str, &str)]) -> Ai {
    let fake = FakeLlm::start().await;
    let dir = tempfile::Builder::new()
        .prefix("mantle-ai-")
        .tempdir()
        .expect("tempdir");
    let mut opts = reliability_options(database.as_ref().map(|d| d.url.as_str()), "2s", "200ms");
    opts.data_dir = Some(dir.path().join("data"));
    opts = opts.env(
        "MANTLE_AI_ALLOWED_BASE_URLS",
        format!("{},{}", fake.openai_base_url(), fake.anthropic_base_url()),
    );
    for (k, v) in extra {
        opts = opts.env(*k, *v);
    }
    let daemon = Daemon::start_ok(opts.clone()).await;
    // MANTLE_API_TOKEN acts like an operator.
    let operator = RELIABILITY_TOKEN.to_owned();
    let m = Mantle::connect(&daemon, RELIABILITY_TOKEN).await;
    let ai = Ai {
        daemon,
        fake,
        m,
        opts,
        operator,
        _dir: dir,
        _db: database,
    };
    ai.secret(
        "openai",
        "openai",
        "sk-openai-test",
        &ai.fake.openai_base_url(),
    )
    .await;
    ai.secret(
        "anthropic",
        "anthropic",
        "sk-ant-test",
        &ai.fake.anthropic_base_url(),
    )
    .await;
    ai
}

impl Ai {
    async fn secret(&self, name: &str, kind: &str, key: &str, base_url: &str) {
        let mut secrets = SecretServiceClient::with_interceptor(
            self.daemon.channel().await,
            Auth::new(Some(RELIABILITY_TOKEN)),
        );
        secrets
            .create_secret(pb::CreateSecretRequest {
                name: name.to_owned(),
                r#type: kind.to_owned(),
                fields: [("api_key", key), ("base_url", base_url)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            })
            .await
            .unwrap_or_else(|s| panic!("CreateSecret {name}: {s:?}"));
    }

    async fn tenant_settings(&self, settings: pb::TenantSettings, paths: &[&str]) {
        let mut tenants = TenantServiceClient::with_interceptor(
            self.daemon.channel().await,
            Auth::new(Some(&self.operator)),
        );
        tenants
            .update_tenant(pb::UpdateTenantRequest {
                name: "default".into(),
                settings: Some(settings),
                settings_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("UpdateTenant: {s:?}"));
    }

    /// Applies `source`, runs it, and returns the execution and its `agent` step's last
    /// attempt's output (or error).
    async fn run(&mut self, source: &str) -> (pb::Execution, Result<Value, (String, Value)>) {
        let def = self.m.apply(source).await;
        let e = self.m.start_ok(&def.name, "").await;
        let e = self.m.wait_terminal(&e.id, WAIT).await;
        let attempts = self.m.attempts(&e.id).await;
        let last = attempts
            .iter()
            .rev()
            .find(|a| a.step_name == "agent")
            .unwrap_or_else(|| panic!("no agent attempt: {attempts:?}"));
        let output = if last.output_json.is_empty() {
            Value::Null
        } else {
            json(&last.output_json)
        };
        let result = if last.status == St::Completed as i32 {
            Ok(output)
        } else {
            Err((last.error.clone(), output))
        };
        (e, result)
    }
}

/// A workflow `name` with one `ai/completion` step `agent` of `provider` and `model`, plus
/// `extra` lines of params (indented by 6).
fn workflow(name: &str, provider: &str, model: &str, extra: &str) -> String {
    format!(
        "name: {name}\nsteps:\n  - name: agent\n    action: ai/completion\n    credential: {provider}\n    params:\n      provider: {provider}\n      model: {model}\n      system: Be brief.\n      prompt: What is the answer?\n{extra}"
    )
}

/// Tools: `lookup` (an http/request to the fake's echo), `note` (core/set), `broken` (an
/// http/request the fake answers 404).
fn tools(fake: &FakeLlm) -> String {
    format!(
        r#"      tools:
        - name: lookup
          description: Looks a word up.
          input_schema:
            type: object
            properties: {{q: {{type: string}}}}
            required: [q]
          action: http/request
          params:
            url: "{url}/echo/lookup"
            query: {{q: "{{{{ tool.input.q }}}}", legacy: "{{{{ inputs.tool_input.q }}}}"}}
        - name: note
          description: Notes a fact.
          input_schema: {{type: object, properties: {{fact: {{type: string}}}}}}
          action: core/set
          params:
            noted: "{{{{ tool.input.fact }}}}"
        - name: broken
          description: Always fails.
          action: http/request
          params:
            url: "{url}/missing/{{{{ tool.input.x }}}}"
"#,
        url = fake.url()
    )
}

fn lookup(q: &str) -> FakeCall {
    FakeCall::new("lookup", json!({"q": q}))
}

fn wf_name(scenario: &str, provider: &str) -> String {
    format!("{scenario}-{provider}")
}

/// The tool results a recorded request carries, as (content, is_error), in both formats.
fn tool_results(call: &mantle_integration::fake_llm::Recorded) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for m in call.messages() {
        if m["role"] == "tool" {
            let content = m["content"].as_str().unwrap_or_default().to_owned();
            let is_error = content.starts_with("Error:") || content.contains("\"is_error\"");
            out.push((content, is_error));
        }
        if let Some(blocks) = m["content"].as_array() {
            for b in blocks.iter().filter(|b| b["type"] == "tool_result") {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push((content, b["is_error"] == true));
            }
        }
    }
    out
}

#[tokio::test]
async fn answers_structured_output_and_credentials_on_both_providers() {
    let mut ai = setup(None, &[]).await;
    for provider in PROVIDERS {
        // Plain completion: the text, the usage, the key and the system prompt sent.
        let model = wf_name("plain", provider);
        ai.fake
            .script(&model, vec![Turn::text("forty-two").usage(30, 4)]);
        let (e, out) = ai
            .run(&workflow(
                &model,
                provider,
                &model,
                "      temperature: 0.2\n",
            ))
            .await;
        assert_eq!(e.status, Ex::Completed as i32, "{provider}: {e:?}");
        let out = out.unwrap();
        assert_eq!(out["text"], "forty-two");
        assert_eq!(out["finish_reason"], "stop");
        assert_eq!(out["rounds"], 1);
        assert_eq!(out["usage"]["input_tokens"], 30);
        assert_eq!(out["usage"]["total_tokens"], 34);
        assert!(out.get("json").is_none(), "{out}");
        let call = &ai.fake.calls_for(&model)[0];
        match provider {
            "openai" => {
                assert_eq!(call.header("authorization"), Some("Bearer sk-openai-test"));
                assert_eq!(call.body["messages"][0]["role"], "system");
                assert_eq!(call.body["temperature"], 0.2);
            }
            _ => {
                assert_eq!(call.header("x-api-key"), Some("sk-ant-test"));
                assert_eq!(call.body["system"], "Be brief.");
            }
        }

        // Structured output, valid: parsed into json.
        let schema = "      output_schema:\n        type: object\n        properties: {name: {type: string}, n: {type: integer}}\n        required: [name]\n";
        let model = wf_name("structured", provider);
        ai.fake
            .script(&model, vec![Turn::text("{\"name\": \"ada\", \"n\": 1}")]);
        let (_, out) = ai.run(&workflow(&model, provider, &model, schema)).await;
        let out = out.unwrap();
        assert_eq!(out["json"], json!({"name": "ada", "n": 1}));
        let body = &ai.fake.calls_for(&model)[0].body;
        if provider == "openai" {
            assert_eq!(body["response_format"]["type"], "json_schema");
            assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        } else {
            assert!(
                body["system"].as_str().unwrap().contains("\"required\""),
                "{body}"
            );
        }
        // Invalid: the step fails, not retried, saying where; the text is kept.
        let model = wf_name("unstructured", provider);
        ai.fake.script(&model, vec![Turn::text("{\"name\": 7}")]);
        let (e, out) = ai.run(&workflow(&model, provider, &model, schema)).await;
        assert_eq!(e.status, Ex::Failed as i32);
        let (error, output) = out.unwrap_err();
        assert!(
            error.starts_with("the answer does not fit output_schema: at /name"),
            "{error}"
        );
        assert_eq!(output["text"], "{\"name\": 7}");
        assert_eq!(ai.fake.count(&model), 1);

        // The tenant's default credential, when the step names none.
        let model = wf_name("tenant-key", provider);
        ai.fake.script(&model, vec![Turn::text("ok")]);
        let source = workflow(&model, provider, &model, "")
            .replace(&format!("    credential: {provider}\n"), "");
        let (e, out) = ai.run(&source).await;
        assert_eq!(e.status, Ex::Failed as i32);
        let (error, _) = out.unwrap_err();
        assert!(
            error.contains(&format!("default_credentials.{provider}")),
            "{error}"
        );
        let secret = format!("tenant-{provider}");
        let base = if provider == "openai" {
            ai.fake.openai_base_url()
        } else {
            ai.fake.anthropic_base_url()
        };
        ai.secret(&secret, provider, &format!("key-of-{secret}"), &base)
            .await;
        ai.tenant_settings(
            pb::TenantSettings {
                default_credentials: [(provider.to_owned(), secret.clone())].into(),
                ..Default::default()
            },
            &["default_credentials"],
        )
        .await;
        let (e, _) = ai.run(&source).await;
        assert_eq!(e.status, Ex::Completed as i32, "{e:?}");
        let call = ai.fake.calls_for(&model).pop().unwrap();
        let key = format!("key-of-{secret}");
        assert!(
            call.header("authorization") == Some(&format!("Bearer {key}"))
                || call.header("x-api-key") == Some(key.as_str()),
            "{:?}",
            call.headers
        );
    }
}

#[tokio::test]
async fn tool_loops_on_both_providers() {
    let mut ai = setup(None, &[]).await;
    let tools = tools(&ai.fake);
    for provider in PROVIDERS {
        // Four rounds of tools, then the answer: every result goes back to the model.
        let model = wf_name("loop", provider);
        let before = ai.fake.echo_count("/echo/lookup");
        ai.fake.script(
            &model,
            vec![
                Turn::tools(vec![lookup("a")]),
                Turn::tools(vec![
                    lookup("b"),
                    FakeCall::new("note", json!({"fact": "b is 2"})),
                ]),
                Turn::tools(vec![lookup("c")]),
                Turn::tools(vec![lookup("d")]),
                Turn::text("a b c d"),
            ],
        );
        let (e, out) = ai.run(&workflow(&model, provider, &model, &tools)).await;
        assert_eq!(e.status, Ex::Completed as i32, "{provider}: {e:?}");
        let out = out.unwrap();
        assert_eq!(out["text"], "a b c d");
        assert_eq!(out["rounds"], 5);
        let calls = out["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 5, "{out}");
        assert_eq!(calls[2]["name"], "note");
        assert_eq!(calls[2]["result"], json!({"noted": "b is 2"}));
        assert_eq!(calls[3]["round"], 3);
        assert_eq!(ai.fake.echo_count("/echo/lookup") - before, 4);
        // Both spellings of the arguments reached the tool's params.
        let echo = ai.fake.echo_calls("/echo/lookup").pop().unwrap();
        assert_eq!(echo.query, "legacy=d&q=d");
        let last = ai.fake.calls_for(&model).pop().unwrap();
        assert_eq!(tool_results(&last).len(), 5);
        assert_eq!(ai.fake.count(&model), 5);
        // GetExecution adds up what the model calls used.
        let usage = e.model_usage.expect("the execution's model usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (50, 25));
        // The execution's log shows each round and each tool call.
        let logs: Vec<String> =
            ai.m.watch(&e.id, 0, WAIT)
                .await
                .unwrap()
                .into_iter()
                .filter(|ev| ev.kind == pb::execution_event::Kind::Log as i32)
                .map(|ev| ev.message)
                .collect();
        assert_eq!(logs.len(), 10, "{logs:#?}");
        assert_eq!(
            logs[0],
            format!("round 1: {model} asked for 1 tool call: lookup (15 tokens)")
        );
        assert!(
            logs[1].starts_with("round 1: tool lookup returned "),
            "{}",
            logs[1]
        );
        assert_eq!(
            logs[9],
            format!("round 5: {model} answered (stop, 15 tokens)")
        );

        // Arguments that do not fit the schema, a failing tool, an unknown tool: errors
        // sent back, the loop goes on.
        let model = wf_name("errors", provider);
        ai.fake.script(
            &model,
            vec![
                Turn::tools(vec![
                    FakeCall::new("lookup", json!({"word": "x"})),
                    FakeCall::new("broken", json!({"x": "y"})),
                    FakeCall::new("nope", json!({})),
                ]),
                Turn::text("sorry"),
            ],
        );
        let before = ai.fake.echo_count("/echo/lookup");
        let (e, out) = ai.run(&workflow(&model, provider, &model, &tools)).await;
        assert_eq!(e.status, Ex::Completed as i32, "{e:?}");
        let calls = out.unwrap()["tool_calls"].as_array().unwrap().clone();
        let error = |i: usize| calls[i]["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error(0).starts_with("the arguments do not fit the tool's input_schema: at /"),
            "{}",
            error(0)
        );
        assert!(error(1).contains("answered 404"), "{}", error(1));
        assert!(
            error(2).starts_with("unknown tool \"nope\""),
            "{}",
            error(2)
        );
        assert_eq!(
            ai.fake.echo_count("/echo/lookup"),
            before,
            "invalid arguments ran"
        );
        let sent = tool_results(&ai.fake.calls_for(&model)[1]);
        assert_eq!(sent.len(), 3);
        assert!(sent[1].0.contains("answered 404"), "{sent:?}");
        if provider == "anthropic" {
            assert!(sent.iter().all(|(_, is_error)| *is_error), "{sent:?}");
        }

        // More calls in a round than allowed: the extra ones get an error result.
        let model = wf_name("many", provider);
        ai.fake.script(
            &model,
            vec![
                Turn::tools(vec![lookup("1"), lookup("2"), lookup("3")]),
                Turn::text("two of three"),
            ],
        );
        let before = ai.fake.echo_count("/echo/lookup");
        let extra = format!("      max_calls_per_round: 2\n{tools}");
        let (_, out) = ai.run(&workflow(&model, provider, &model, &extra)).await;
        let out = out.unwrap();
        assert_eq!(ai.fake.echo_count("/echo/lookup") - before, 2);
        let third = out["tool_calls"][2]["error"].as_str().unwrap();
        assert!(
            third.contains("at most 2 run (max_tool_calls_per_round)"),
            "{third}"
        );

        // Round limit reached: one last call without tools gets the answer...
        let model = wf_name("final", provider);
        ai.fake.script(
            &model,
            vec![
                Turn::tools(vec![lookup("x")]),
                Turn::tools(vec![lookup("y")]),
                Turn::text("best effort"),
            ],
        );
        let extra = format!("      max_tool_rounds: 2\n{tools}");
        let (e, out) = ai.run(&workflow(&model, provider, &model, &extra)).await;
        assert_eq!(e.status, Ex::Completed as i32);
        assert_eq!(out.unwrap()["text"], "best effort");
        let last = ai.fake.calls_for(&model).pop().unwrap();
        let choice = &last.body["tool_choice"];
        assert!(
            choice == "none" || choice["type"] == "none",
            "{}",
            last.body
        );
        assert!(
            last.raw_body.contains("used every tool round"),
            "{}",
            last.raw_body
        );
        // ... and a model that still asks for tools fails the step, naming the limit.
        let model = wf_name("stubborn", provider);
        ai.fake.script(&model, vec![Turn::tools(vec![lookup("z")])]);
        let (e, out) = ai.run(&workflow(&model, provider, &model, &extra)).await;
        assert_eq!(e.status, Ex::Failed as i32);
        let (error, _) = out.unwrap_err();
        assert!(
            error.contains("still asked for tools after max_tool_rounds (2) rounds"),
            "{error}"
        );
        assert_eq!(ai.fake.count(&model), 3);

        // The step's budget stops it before the call that would pass it.
        let model = wf_name("budget", provider);
        ai.fake.script(
            &model,
            vec![Turn::tools(vec![lookup("q")]).usage(1000, 200)],
        );
        let extra = format!("      max_token_budget: 2500\n{tools}");
        let (e, out) = ai.run(&workflow(&model, provider, &model, &extra)).await;
        assert_eq!(e.status, Ex::Failed as i32);
        let (error, _) = out.unwrap_err();
        assert!(
            error.starts_with(
                "stopped before model call 3: max_token_budget 2500 would be exceeded (2400 tokens used, the call is expected to use about 1000)"
            ),
            "{error}"
        );
        assert_eq!(ai.fake.count(&model), 2);
    }
}

/// A provider's 503 fails the attempt; the retry goes on from the checkpoints: the first
/// round's call and tool are not made again.
#[tokio::test]
async fn a_retry_goes_on_from_the_checkpoints() {
    let mut ai = setup(None, &[]).await;
    let tools = tools(&ai.fake);
    let turns = |second: Turn| vec![Turn::tools(vec![lookup("once")]), second, Turn::text("ok")];
    ai.fake
        .script("flaky", turns(Turn::failure(503, "overloaded")));
    let source = workflow("flaky", "openai", "flaky", &tools).replacen(
        "    params:\n",
        "    retry: {max_attempts: 3, initial_backoff: 2s}\n    params:\n",
        1,
    );
    let def = ai.m.apply(&source).await;
    let e = ai.m.start_ok(&def.name, "").await;
    assert!(ai.fake.wait_for_calls("flaky", 2, WAIT).await);
    ai.fake.script("flaky", turns(Turn::text("recovered")));
    let e = ai.m.wait_terminal(&e.id, WAIT).await;
    assert_eq!(e.status, Ex::Completed as i32, "{e:?}");
    let attempts = ai.m.attempts(&e.id).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[0]
            .error
            .contains("openai answered 503: overloaded"),
        "{:?}",
        attempts[0]
    );
    let turns: Vec<usize> = ai.fake.calls_for("flaky").iter().map(|c| c.turn).collect();
    assert_eq!(turns, [0, 1, 1]);
    assert_eq!(ai.fake.echo_calls("/echo/lookup").len(), 1);
    let out = json(&attempts[1].output_json);
    assert_eq!(out["text"], "recovered");
    assert_eq!(out["tool_calls"][0]["round"], 1);
}

#[tokio::test]
async fn budgets_of_the_workflow_the_tenant_and_the_installation() {
    // Models of the fake are free, but for `unpriced`: with a cost cap it cannot run.
    let prices = tempfile::NamedTempFile::new().expect("a price file");
    std::fs::write(
        prices.path(),
        r#"{"wf-budget": {"input_per_million": 0, "output_per_million": 0},
            "daily": {"input_per_million": 0, "output_per_million": 0}}"#,
    )
    .expect("writing the price file");
    let prices_path = prices.path().display().to_string();
    let mut ai = setup(
        None,
        &[
            ("MANTLE_MAX_COST_USD", "5"),
            ("MANTLE_AI_PRICES_FILE", prices_path.as_str()),
        ],
    )
    .await;
    // The workflow's token_budget counts every AI step of the execution.
    ai.fake
        .script("wf-budget", vec![Turn::text("x").usage(190, 5)]);
    let source = "name: wf-budget\ntoken_budget: 200\nsteps:\n  - name: agent\n    action: ai/completion\n    credential: openai\n    params: {provider: openai, model: wf-budget, prompt: first}\n  - name: second\n    action: ai/completion\n    credential: openai\n    depends_on: [agent]\n    params: {provider: openai, model: wf-budget, prompt: again}\n";
    let def = ai.m.apply(source).await;
    let e = ai.m.start_ok(&def.name, "").await;
    let e = ai.m.wait_terminal(&e.id, WAIT).await;
    assert_eq!(e.status, Ex::Failed as i32);
    assert!(
        e.error
            .contains("the workflow's token_budget 200 would be exceeded"),
        "{}",
        e.error
    );
    assert_eq!(ai.fake.count("wf-budget"), 1);

    // The installation's cap per execution: gpt-4o at $2.50 per million input tokens.
    ai.fake.script(
        "gpt-4o",
        vec![Turn::tools(vec![lookup("a")]).usage(1_500_000, 0)],
    );
    let tools = tools(&ai.fake);
    let (e, out) = ai
        .run(&workflow("install-cap", "openai", "gpt-4o", &tools))
        .await;
    assert_eq!(e.status, Ex::Failed as i32);
    let (error, _) = out.unwrap_err();
    assert!(
        error.contains("the installation's MANTLE_MAX_COST_USD 5 would be exceeded"),
        "{error}"
    );
    assert_eq!(ai.fake.count("gpt-4o"), 1);

    // The tenant's cost cap: a model without a price cannot be checked against it.
    ai.tenant_settings(
        pb::TenantSettings {
            max_cost_usd_per_execution: 1.0,
            ..Default::default()
        },
        &["max_cost_usd_per_execution"],
    )
    .await;
    ai.fake.script("unpriced", vec![Turn::text("x")]);
    let (_, out) = ai
        .run(&workflow("unpriced", "openai", "unpriced", ""))
        .await;
    let (error, _) = out.unwrap_err();
    assert!(
        error.contains("max_cost_usd_per_execution 1 would be exceeded (the model has no price"),
        "{error}"
    );
    assert_eq!(ai.fake.count("unpriced"), 0);
    ai.fake.script(
        "gpt-4o-mini",
        vec![Turn::tools(vec![lookup("a")]).usage(4_000_000, 0)],
    );
    let (_, out) = ai
        .run(&workflow("tenant-cost", "openai", "gpt-4o-mini", &tools))
        .await;
    let (error, _) = out.unwrap_err();
    assert!(
        error.contains("the tenant's max_cost_usd_per_execution 1 would be exceeded"),
        "{error}"
    );
    ai.tenant_settings(
        pb::TenantSettings::default(),
        &["max_cost_usd_per_execution"],
    )
    .await;

    // The tenant's tokens per day, across executions.
    ai.tenant_settings(
        pb::TenantSettings {
            max_tokens_per_day: 1_000,
            ..Default::default()
        },
        &["max_tokens_per_day"],
    )
    .await;
    ai.fake.script("daily", vec![Turn::text("x").usage(0, 10)]);
    let (e, _) = ai.run(&workflow("daily", "openai", "daily", "")).await;
    assert_eq!(
        e.status,
        Ex::Failed as i32,
        "the day's usage so far is over 1000"
    );
    ai.tenant_settings(
        pb::TenantSettings {
            max_tokens_per_day: 100_000_000,
            ..Default::default()
        },
        &["max_tokens_per_day"],
    )
    .await;
    let (e, _) = ai.run(&workflow("daily", "openai", "daily", "")).await;
    assert_eq!(e.status, Ex::Completed as i32);

    // Usage is counted in the metrics.
    let metrics = ai.daemon.http_get("/metrics").await.unwrap().body;
    assert!(
        metrics.contains("mantle_ai_tokens_total{") && metrics.contains("model=\"gpt-4o\""),
        "{metrics}"
    );
    assert!(metrics.contains("mantle_ai_cost_usd_total{"), "{metrics}");
}

/// SIGKILL while the third model call (after two rounds of tools) is in flight: another
/// daemon goes on from the checkpoints. Each completed model call and each tool call was
/// made once; only the interrupted call was made again.
async fn killed_in_the_middle_of_a_tool_loop(database: Option<PgDatabase>, provider: &str) {
    let postgres = database.is_some();
    let mut ai = setup(database, &[]).await;
    let model = "crashy";
    let turns = |hold: Duration| {
        vec![
            Turn::tools(vec![lookup("r1")]),
            Turn::tools(vec![lookup("r2a"), lookup("r2b")]),
            Turn::tools(vec![lookup("r3")]).delay(hold),
            Turn::tools(vec![lookup("r4")]),
            Turn::text("done after four rounds"),
        ]
    };
    ai.fake.script(model, turns(Duration::from_secs(120)));
    let tools = tools(&ai.fake);
    let def =
        ai.m.apply(&workflow("crashy", provider, model, &tools))
            .await;
    let e = ai.m.start_ok(&def.name, "").await;
    assert!(
        ai.fake.wait_for_calls(model, 3, WAIT).await,
        "the third model call never came: {:?}\n{}",
        ai.fake.calls_for(model).len(),
        ai.daemon.diagnostics()
    );
    ai.daemon.sigkill().await.expect("SIGKILL");
    ai.fake.script(model, turns(Duration::ZERO));
    if postgres {
        // Another daemon on the same database takes over once the lease expires.
        ai.daemon = Daemon::start_ok(ai.opts.clone()).await;
    } else {
        ai.daemon.restart_ok(ai.opts.clone()).await;
    }
    ai.m = Mantle::connect(&ai.daemon, RELIABILITY_TOKEN).await;
    let done = ai.m.wait_terminal(&e.id, WAIT).await;
    assert_eq!(
        done.status,
        Ex::Completed as i32,
        "{done:?}\n{}",
        ai.daemon.diagnostics()
    );
    let calls = ai.fake.calls_for(model);
    let per_turn = |t: usize| calls.iter().filter(|c| c.turn == t).count();
    assert_eq!(
        (
            per_turn(0),
            per_turn(1),
            per_turn(2),
            per_turn(3),
            per_turn(4)
        ),
        (1, 1, 2, 1, 1),
        "model calls per round"
    );
    for q in ["r1", "r2a", "r2b", "r3", "r4"] {
        let n = ai
            .fake
            .echo_calls("/echo/lookup")
            .iter()
            .filter(|c| c.query.ends_with(&format!("&q={q}")))
            .count();
        assert_eq!(n, 1, "tool call {q}");
    }
    let attempts = ai.m.attempts(&e.id).await;
    let out = json(
        &attempts
            .iter()
            .find(|a| a.status == St::Completed as i32)
            .expect("a completed attempt")
            .output_json,
    );
    assert_eq!(out["tool_calls"].as_array().unwrap().len(), 5);
    assert_eq!(out["rounds"], 5);
    assert_eq!(out["usage"]["input_tokens"], 50, "{out}");
}

#[tokio::test]
async fn a_killed_daemon_resumes_the_tool_loop_on_sqlite() {
    killed_in_the_middle_of_a_tool_loop(None, "anthropic").await;
}

#[tokio::test]
async fn a_killed_daemon_resumes_the_tool_loop_on_postgres() {
    let Some(db) = PgDatabase::create("ai_kill_on_postgres").await else {
        return;
    };
    killed_in_the_middle_of_a_tool_loop(Some(db), "openai").await;
}

/// The examples of `examples/ai-*.yaml` run as `examples/ai/run.sh` runs them: scripted by
/// `examples/ai/fake-script.json`, the agent with the tenant's default credential.
#[tokio::test]
async fn the_examples_run_against_the_fake() {
    let mut ai = setup(None, &[]).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script =
        mantle_integration::fake_llm::load_script(&root.join("examples/ai/fake-script.json"))
            .expect("the examples' script");
    ai.fake.script_all(script);
    ai.tenant_settings(
        pb::TenantSettings {
            default_credentials: [("anthropic".to_owned(), "anthropic".to_owned())].into(),
            ..Default::default()
        },
        &["default_credentials"],
    )
    .await;
    let fake = ai.fake.url();
    let cases = [
        (
            "ai-summarize",
            json!({"url": format!("{fake}/echo/page")}),
            "summary",
        ),
        (
            "ai-extract",
            json!({"text": "Ada Lovelace (36) writes from ada@example.com"}),
            "person",
        ),
        (
            "ai-agent",
            json!({"question": "What is the weather in Paris?", "weather_api": format!("{fake}/echo/weather")}),
            "answer",
        ),
    ];
    for (name, inputs, output) in cases {
        let source = std::fs::read_to_string(root.join(format!("examples/{name}.yaml")))
            .expect("an example");
        ai.m.apply(&source).await;
        let e = ai.m.start_ok(name, &inputs.to_string()).await;
        let e = ai.m.wait_terminal(&e.id, WAIT).await;
        assert_eq!(e.status, Ex::Completed as i32, "{name}: {e:?}");
        let outputs = json(&e.outputs_json);
        assert!(!outputs[output].is_null(), "{name}: {outputs}");
    }
    assert_eq!(ai.fake.echo_count("/echo/weather/Paris"), 1);
}
