//! Actions declared by a test (an effect and a pure one): registered with one line, then checked by the workflow
//! loader (through `Definitions`, as ApplyDefinition checks files) and run by the engine,
//! in process, on a SQLite store.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mantle_daemon::auth::{Caller, Scope, ScopeSet};
use mantle_daemon::connectors::params::{parse, schema_of};
use mantle_daemon::connectors::{
    ActionError, ActionSpec, BUILTIN, Effect, Invocation, Registry, Run,
};
use mantle_daemon::definitions::{self, Definitions};
use mantle_daemon::engine::model::ExecutionStatus;
use mantle_daemon::engine::{Engine, EngineConfig, StartRequest};
use mantle_daemon::secrets::Secrets;
use mantle_daemon::secrets::crypto::KeyRing;
use mantle_daemon::store::{self, OpenOptions, Store};
use mantle_daemon::tenancy::model::{Tenant, TenantRef, TenantSettings};
use serde_json::{Value, json};

/// `test/shout`'s params: the schema the loader checks, and what the runner reads.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ShoutParams {
    /// the text to shout
    text: String,
    /// how many exclamation marks (default 1)
    times: Option<u32>,
}

/// The test's action.
const SHOUT: ActionSpec = ActionSpec {
    name: "test/shout",
    description: "Answers its text in capitals.",
    params: schema_of::<ShoutParams>,
    output: schema_of::<ShoutOutput>,
    credential_types: &[],
    logs: false,
    tools: false,
    run: Run::Effect(|_| Ok(Arc::new(Shout))),
};

/// What `test/shout` outputs.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct ShoutOutput {
    /// the text in capitals
    shouted: String,
}

/// What `test/count` outputs.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct CountOutput {
    /// how many characters
    chars: usize,
}

struct Shout;

#[async_trait::async_trait]
impl Effect for Shout {
    async fn run(&self, inv: Invocation) -> Result<Value, ActionError> {
        let p: ShoutParams = parse(&inv.params).map_err(ActionError::permanent)?;
        let marks = "!".repeat(p.times.unwrap_or(1) as usize);
        let shouted = format!("{}{marks}", p.text.to_uppercase());
        Ok(serde_json::to_value(ShoutOutput { shouted }).expect("an output serializes"))
    }
}

/// A pure test action: it runs inside the driver, from the same registry.
const COUNT: ActionSpec = ActionSpec {
    name: "test/count",
    description: "Counts the characters of its text.",
    params: schema_of::<CountParams>,
    output: schema_of::<CountOutput>,
    credential_types: &[],
    logs: false,
    tools: false,
    run: Run::Pure(count),
};

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountParams {
    /// the text to count
    text: String,
}

fn count(params: &serde_json::Map<String, Value>) -> Result<Value, String> {
    let p: CountParams = parse(params)?;
    Ok(serde_json::to_value(CountOutput {
        chars: p.text.chars().count(),
    })
    .expect("serializes"))
}

const GOOD: &str = r#"
name: shouting
inputs:
  who: { type: string }
steps:
  - name: shout
    action: test/shout
    params:
      text: "hello {{ inputs.who }}"
      times: 3
  - name: count
    action: test/count
    params:
      text: "{{ steps.shout.output.shouted }}"
outputs:
  said: steps.shout.output.shouted
  chars: steps.count.output.chars
"#;

const BAD: &str = r#"
name: shouting
steps:
  - name: shout
    action: test/shout
    params:
      txt: hi
      times: many
"#;

struct World {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    caller: Caller,
    pool: mantle_daemon::cpu::CpuPool,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&OpenOptions {
        url: String::new(),
        data_dir: dir.path().to_owned(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
        exclusive: true,
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let tenant = Tenant {
        id: uuid::Uuid::now_v7(),
        name: "acme".into(),
        display_name: "Acme".into(),
        create_time: Utc::now(),
        update_time: Utc::now(),
        settings: TenantSettings::default(),
    };
    store.create_tenant(&tenant).await.unwrap();
    World {
        _dir: dir,
        store,
        caller: Caller {
            key_id: "test".into(),
            tenant: Some(TenantRef::from(&tenant)),
            scopes: ScopeSet::new([Scope::AllTenantScopes]),
            operator: false,
        },
        pool: mantle_daemon::cpu::CpuPool::new(2),
    }
}

/// The problems of a refused file, as `file:line:column: path: message`.
fn problems(err: definitions::Error) -> Vec<String> {
    match err {
        definitions::Error::Invalid { file, problems } => problems
            .iter()
            .map(|p| {
                format!(
                    "{file}:{}:{}: {}: {}",
                    p.pos.line, p.pos.column, p.path, p.message
                )
            })
            .collect(),
        other => panic!("expected problems, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_registered_in_a_test_is_validated_and_run() {
    // The one line that registers them.
    let actions = Arc::new(Registry::new(BUILTIN.iter().chain(&[&SHOUT, &COUNT])));

    let w = world().await;
    let defs = Definitions::new(w.store.clone(), None, w.pool.clone(), actions.clone());

    // Validated against its declared params, with positions.
    let err = defs.apply(&w.caller, BAD, "bad.yaml").await.unwrap_err();
    assert_eq!(
        problems(err),
        [
            "bad.yaml:7:7: steps[0].params: missing required param \"text\" of test/shout",
            "bad.yaml:7:7: steps[0].params.txt: unknown param \"txt\" of test/shout; did you mean \"text\"?",
            "bad.yaml:8:14: steps[0].params.times: expected an integer, found a string",
        ]
    );
    // Without the registration line the action does not exist.
    let builtin = Definitions::new(
        w.store.clone(),
        None,
        w.pool.clone(),
        Arc::new(Registry::new(BUILTIN)),
    );
    let err = builtin
        .apply(&w.caller, GOOD, "good.yaml")
        .await
        .unwrap_err();
    assert_eq!(
        problems(err)[0],
        "good.yaml:7:13: steps[0].action: unknown action \"test/shout\""
    );

    defs.apply(&w.caller, GOOD, "good.yaml").await.unwrap();
    // Listed with its schema, derived from its params type.
    let listed = defs.actions(&w.caller).unwrap().get("test/shout").unwrap();
    let schema = listed.params_schema();
    assert_eq!(schema["required"], json!(["text"]));
    assert_eq!(schema["properties"]["times"]["type"], "integer");
    assert_eq!(
        schema["properties"]["times"]["description"],
        "how many exclamation marks (default 1)"
    );
    let output = listed.output_schema();
    assert_eq!(output["properties"]["shouted"]["type"], "string");
    assert_eq!(output["required"], json!(["shouted"]));

    // Run by the engine of a daemon that registered it.
    let secrets = Secrets::new(
        w.store.clone(),
        Arc::new(KeyRing::from_hex(&KeyRing::generate_hex(), None).unwrap()),
    );
    let engine = Engine::new(
        w.store.clone(),
        EngineConfig::default(),
        secrets,
        w.pool.clone(),
        actions,
    )
    .unwrap();
    engine.run();
    let tenant_id = w.caller.tenant.as_ref().unwrap().id;
    let started = engine
        .start(StartRequest {
            tenant_id,
            workflow: "shouting".into(),
            version: None,
            inputs: json!({"who": "mantle"}).as_object().unwrap().clone(),
            trigger: json!({}),
            idempotency_key: None,
            fire: None,
            fingerprint: None,
            trigger_input: false,
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ended = loop {
        let e = w.store.get_execution(tenant_id, started.id).await.unwrap();
        if e.status.is_terminal() {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "still {:?}", e.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        ended.status,
        ExecutionStatus::Completed,
        "{:?}",
        ended.error
    );
    assert_eq!(
        ended.outputs,
        Some(json!({"said": "HELLO MANTLE!!!", "chars": 15}))
    );
    engine.shutdown().await;
}
