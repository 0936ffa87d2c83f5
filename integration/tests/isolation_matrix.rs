//! Tenant isolation matrix, generated from the API's descriptors.
//!
//! Every method of every `mantle.v1` service found in `mantle_proto::FILE_DESCRIPTOR_SET` is
//! called with another tenant's key, with a request that names tenant A's resources (a
//! workflow `secret-wf` and its cron trigger, a finished execution of it, a secret
//! `a-secret`, tenant `a` itself and its API key). Requests are encoded generically from the request message's descriptor
//! and a table of field values ([`field_value`]); calls go through tonic's `Grpc` client with a
//! raw-bytes codec, unary and server-streaming alike.
//!
//! Nothing is hand-listed per RPC except the expected outcome ([`RULES`]): a method the
//! descriptors contain but [`RULES`] does not know, a request field [`field_value`] does not
//! know, or a rule for a method that no longer exists, fails the test, so a new RPC cannot be
//! forgotten.
//!
//! For every method and caller the test asserts the contract's answer (NOT_FOUND for another
//! tenant's resource, PERMISSION_DENIED for operator-only RPCs, or success in the caller's own
//! tenant), and that nothing in the answer (messages, status message, status details) carries
//! any of A's data that the request did not itself contain. With A's own key, the same
//! requests of the read-only methods succeed (so B's NOT_FOUND is isolation, not a malformed
//! request). Afterwards A's resources must be exactly as before.
//!
//! The matrix is printed (run with `--no-capture` to see it on success). PostgreSQL follows
//! the harness's policy: skipped loudly when unreachable, failed under CI=true.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use mantle_integration::*;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

use pb::secret_service_client::SecretServiceClient;
use pb::trigger_service_client::TriggerServiceClient;

const PACKAGE: &str = "mantle.v1";
const WORKFLOW: &str = "secret-wf";
const SECRET: &str = "a-secret";
const TENANT_A: &str = "a";
/// How long a streaming call may take before it counts as hanging.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Expected outcomes
// ---------------------------------------------------------------------------------------------

/// What another tenant's key must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The request names A's resource: NOT_FOUND, exactly as if it did not exist.
    NotFound,
    /// Needs `tenants:admin`, which a tenant key never holds: PERMISSION_DENIED.
    Denied,
    /// Acts in the caller's own tenant: OK (or NOT_FOUND / PERMISSION_DENIED), never A's data.
    Own,
    /// Acts in the caller's own tenant, where it must succeed, never with A's data.
    OwnOk,
}

/// A second call of a method once the caller's own tenant holds a workflow and a secret of
/// the same names as A's (after phase 1).
#[derive(Debug, Clone, Copy)]
struct Again {
    expect: Expect,
    /// Also call it with this request field left out and its value sent as this metadata
    /// instead: `(field, metadata key)`.
    metadata: Option<(&'static str, &'static str)>,
}

/// The rule for one method.
#[derive(Debug, Clone, Copy)]
struct Rule {
    expect: Expect,
    /// 0: runs first. 1: creates something in the caller's own tenant (under A's names), so it
    /// runs after every method that must not see such a thing.
    phase: u8,
    /// A read-only method whose same request, sent with A's own key, must succeed.
    control: bool,
    /// Call it again after phase 1.
    again: Option<Again>,
}

const fn rule(expect: Expect, phase: u8, control: bool) -> Rule {
    Rule {
        expect,
        phase,
        control,
        again: None,
    }
}

const NOT_FOUND: Rule = rule(Expect::NotFound, 0, false);
const NOT_FOUND_READ: Rule = rule(Expect::NotFound, 0, true);
const OWN_READ: Rule = rule(Expect::Own, 0, true);
const DENIED: Rule = rule(Expect::Denied, 0, false);
const OWN: Rule = rule(Expect::Own, 0, false);
const OWN_CREATE: Rule = rule(Expect::Own, 1, false);

/// Every RPC of package `mantle.v1`. A method missing here fails the test.
const RULES: &[(&str, Rule)] = &[
    // Naming tenant A's events: another tenant's key gets NOT_FOUND.
    ("mantle.v1.AuditService/ListAuditEvents", NOT_FOUND_READ),
    // Naming tenant A: NOT_FOUND (A has no webhook, so its own key would list nothing).
    ("mantle.v1.WebhookService/ListWebhookDeliveries", NOT_FOUND),
    ("mantle.v1.DefinitionService/ValidateDefinition", OWN),
    ("mantle.v1.DefinitionService/PlanDefinition", OWN),
    ("mantle.v1.DefinitionService/ApplyDefinition", OWN_CREATE),
    // Naming A's workflow and its version 1.
    ("mantle.v1.DefinitionService/RollbackDefinition", NOT_FOUND),
    ("mantle.v1.DefinitionService/GetDefinition", NOT_FOUND_READ),
    ("mantle.v1.DefinitionService/ListDefinitions", OWN),
    (
        "mantle.v1.DefinitionService/ListDefinitionVersions",
        NOT_FOUND_READ,
    ),
    ("mantle.v1.DefinitionService/DeleteDefinition", NOT_FOUND),
    // The installation's actions: the same for every tenant, no tenant's data.
    ("mantle.v1.DefinitionService/ListActions", OWN),
    // With A's idempotency key. The caller's tenant has no workflow `secret-wf` (phase 0):
    // NOT_FOUND. Once it has its own `secret-wf`, the same request (and the key sent as
    // metadata) must start the caller's own execution: idempotency keys are per tenant.
    (
        "mantle.v1.ExecutionService/StartExecution",
        Rule {
            again: Some(Again {
                expect: Expect::OwnOk,
                metadata: Some(("idempotency_key", "idempotency-key")),
            }),
            ..NOT_FOUND
        },
    ),
    ("mantle.v1.ExecutionService/GetExecution", NOT_FOUND_READ),
    ("mantle.v1.ExecutionService/ListExecutions", OWN),
    ("mantle.v1.ExecutionService/CancelExecution", NOT_FOUND),
    // Naming A's workflow: cancels the caller's own executions of that name only (A's
    // execution is checked untouched afterwards).
    ("mantle.v1.ExecutionService/CancelExecutions", OWN),
    ("mantle.v1.ExecutionService/DeleteExecution", NOT_FOUND),
    // Everything finished before 2100, of A's workflow: the caller's own only.
    ("mantle.v1.ExecutionService/DeleteExecutions", OWN),
    ("mantle.v1.ExecutionService/RetryExecution", NOT_FOUND),
    (
        "mantle.v1.ExecutionService/ListStepAttempts",
        NOT_FOUND_READ,
    ),
    ("mantle.v1.ExecutionService/WatchExecution", NOT_FOUND_READ),
    ("mantle.v1.SecretService/CreateSecret", OWN_CREATE),
    ("mantle.v1.SecretService/UpdateSecret", NOT_FOUND),
    ("mantle.v1.SecretService/GetSecret", NOT_FOUND_READ),
    ("mantle.v1.SecretService/ListSecrets", OWN),
    ("mantle.v1.SecretService/DeleteSecret", NOT_FOUND),
    ("mantle.v1.SecretService/RotateEncryptionKey", DENIED),
    ("mantle.v1.SystemService/GetServerInfo", OWN),
    // Naming A's workflow: the caller's own triggers of that name (none); A's own key
    // lists A's trigger.
    ("mantle.v1.TriggerService/ListTriggers", OWN_READ),
    // Naming A's trigger by its id.
    ("mantle.v1.TriggerService/PauseTrigger", NOT_FOUND),
    ("mantle.v1.TriggerService/ResumeTrigger", NOT_FOUND),
    ("mantle.v1.TriggerService/FireTrigger", NOT_FOUND),
    ("mantle.v1.TenantService/CreateTenant", DENIED),
    ("mantle.v1.TenantService/GetTenant", NOT_FOUND_READ),
    ("mantle.v1.TenantService/ListTenants", DENIED),
    ("mantle.v1.TenantService/UpdateTenant", DENIED),
    ("mantle.v1.TenantService/DeleteTenant", DENIED),
    ("mantle.v1.TenantService/CreateApiKey", DENIED),
    ("mantle.v1.TenantService/ListApiKeys", DENIED),
    ("mantle.v1.TenantService/RevokeApiKey", DENIED),
];

// ---------------------------------------------------------------------------------------------
// Tenant A's resources
// ---------------------------------------------------------------------------------------------

/// Everything tenant A owns, and the markers none of it may leak through.
#[derive(Debug, Clone)]
struct TenantA {
    token: String,
    tenant_id: String,
    key_id: String,
    source: String,
    content_hash: String,
    description_marker: String,
    output_marker: String,
    execution_id: String,
    idempotency_key: String,
    secret_field: String,
    secret_value: String,
    /// The id of the trigger A's workflow declares.
    trigger_id: String,
}

impl TenantA {
    /// `(label, value, from A's workflow source)`. A marker is looked for in every answer,
    /// except when the request itself carried it, and, for the markers that follow from the
    /// workflow source (its text, name, content hash, the outputs it computes), when the
    /// request carried the source or the caller's own tenant holds a copy of it (phase 2).
    fn markers(&self) -> Vec<(&'static str, String, bool)> {
        vec![
            ("A's execution id", self.execution_id.clone(), false),
            ("A's idempotency key", self.idempotency_key.clone(), false),
            ("A's tenant id", self.tenant_id.clone(), false),
            ("A's API key id", self.key_id.clone(), false),
            ("A's workflow name", WORKFLOW.to_owned(), true),
            (
                "A's workflow source (description marker)",
                self.description_marker.clone(),
                true,
            ),
            ("A's execution output", self.output_marker.clone(), true),
            ("A's content hash", self.content_hash.clone(), true),
            ("A's secret name", SECRET.to_owned(), false),
            ("A's secret field name", self.secret_field.clone(), false),
            ("A's secret VALUE", self.secret_value.clone(), false),
            ("A's token", self.token.clone(), false),
            ("A's trigger id", self.trigger_id.clone(), false),
        ]
    }
}

fn workflow_source(description_marker: &str, output_marker: &str) -> String {
    format!(
        "name: {WORKFLOW}
description: isolation {description_marker}
triggers:
  # Midnight of February 29th: it does not fire while the test runs.
  - type: cron
    schedule: \"0 0 29 2 *\"
steps:
  - name: leak
    action: core/set
    params:
      value: {output_marker}
outputs:
  value: steps.leak.output.value
"
    )
}

// ---------------------------------------------------------------------------------------------
// Request fields
// ---------------------------------------------------------------------------------------------

/// The value of one request field.
#[derive(Debug, Clone)]
enum FieldValue {
    /// Left unset (the zero value).
    Unset,
    Str(String),
    Strs(Vec<String>),
    Map(Vec<(String, String)>),
    /// A varint: integers, enums, bools.
    Int(i64),
    /// A nested message with these fields (others unset).
    Msg(Vec<(&'static str, FieldValue)>),
}

/// The value a request of `service` gets for `field`, targeting tenant A. `None`: unknown,
/// which fails the test.
fn field_value(a: &TenantA, service: &str, field: &str) -> Option<FieldValue> {
    use FieldValue::*;
    Some(match (service, field) {
        // Paging, filters, versions and cursors: defaults.
        (
            _,
            "page_size" | "page_token" | "version" | "after_seq" | "batch_size" | "show_revoked"
            | "status" | "created_after" | "created_before" | "expire_time" | "inputs_json"
            | "view" | "actor" | "action" | "result" | "since",
        ) => Unset,
        // A's execution: filtering by it must not open A's deliveries to another tenant.
        ("WebhookService", "execution_id") => Str(a.execution_id.clone()),
        (_, "workflow") => Str(WORKFLOW.to_owned()),
        (_, "source") => Str(a.source.clone()),
        (_, "filename") => Str(format!("{WORKFLOW}.yaml")),
        ("DefinitionService", "name") => Str(WORKFLOW.to_owned()),
        ("ExecutionService", "id") => Str(a.execution_id.clone()),
        ("ExecutionService", "idempotency_key") => Str(a.idempotency_key.clone()),
        ("ExecutionService", "ended_before") => Msg(vec![("seconds", Int(4_102_444_800))]),
        ("DefinitionService", "to_version") => Int(1),
        ("TriggerService", "id") => Str(a.trigger_id.clone()),
        ("SecretService", "name") => Str(SECRET.to_owned()),
        ("SecretService", "type") => Str("generic".to_owned()),
        // The caller's own field name, so A's field name stays a marker.
        ("SecretService", "fields") => Map(vec![(
            "intruder_field".to_owned(),
            "intruder-value".to_owned(),
        )]),
        ("TenantService", "name" | "tenant") | ("AuditService" | "WebhookService", "tenant") => {
            Str(TENANT_A.to_owned())
        }
        ("TenantService", "id") => Str(a.key_id.clone()),
        ("TenantService", "display_name") => Str("renamed-by-intruder".to_owned()),
        ("TenantService", "scopes") => Strs(vec!["*".to_owned()]),
        // Tenant limits, where the API has them: try to change A's.
        ("TenantService", "settings") => Msg(vec![
            ("max_steps_per_workflow", Int(1)),
            ("allowed_domains", Strs(vec!["intruder.example".to_owned()])),
        ]),
        ("TenantService", "settings_mask") => Msg(vec![(
            "paths",
            Strs(vec![
                "max_steps_per_workflow".to_owned(),
                "allowed_domains".to_owned(),
            ]),
        )]),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Method {
    /// `Service` (short name).
    service: String,
    /// `mantle.v1.Service/Method`.
    full: String,
    /// `.mantle.v1.Request`.
    input: String,
    server_streaming: bool,
    client_streaming: bool,
}

struct Descriptors {
    methods: Vec<Method>,
    /// Every message by its full name with a leading dot, nested ones included.
    messages: HashMap<String, DescriptorProto>,
}

fn index_messages(
    prefix: &str,
    messages: &[DescriptorProto],
    out: &mut HashMap<String, DescriptorProto>,
) {
    for m in messages {
        let name = format!("{prefix}.{}", m.name());
        index_messages(&name, &m.nested_type, out);
        out.insert(name, m.clone());
    }
}

fn descriptors() -> Descriptors {
    let set = FileDescriptorSet::decode(mantle_proto::FILE_DESCRIPTOR_SET)
        .expect("mantle_proto::FILE_DESCRIPTOR_SET decodes");
    let mut messages = HashMap::new();
    let mut methods = Vec::new();
    for file in &set.file {
        let prefix = if file.package().is_empty() {
            String::new()
        } else {
            format!(".{}", file.package())
        };
        index_messages(&prefix, &file.message_type, &mut messages);
        if file.package() != PACKAGE {
            continue;
        }
        for service in &file.service {
            for m in &service.method {
                methods.push(Method {
                    service: service.name().to_owned(),
                    full: format!("{PACKAGE}.{}/{}", service.name(), m.name()),
                    input: m.input_type().to_owned(),
                    server_streaming: m.server_streaming(),
                    client_streaming: m.client_streaming(),
                });
            }
        }
    }
    Descriptors { methods, messages }
}

// ---------------------------------------------------------------------------------------------
// Generic protobuf encoding of requests
// ---------------------------------------------------------------------------------------------

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes_field(buf: &mut Vec<u8>, number: i32, bytes: &[u8]) {
    put_varint(buf, (u64::from(number as u32) << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Appends `value` as `field` to `buf`.
fn encode_value(
    d: &Descriptors,
    buf: &mut Vec<u8>,
    field: &FieldDescriptorProto,
    value: FieldValue,
) -> Result<(), String> {
    let repeated = field.label() == Label::Repeated;
    let ty = field.r#type();
    match value {
        FieldValue::Unset => {}
        FieldValue::Str(s) if ty == Type::String && !repeated => {
            put_bytes_field(buf, field.number(), s.as_bytes());
        }
        FieldValue::Strs(list) if ty == Type::String && repeated => {
            for s in list {
                put_bytes_field(buf, field.number(), s.as_bytes());
            }
        }
        FieldValue::Int(v)
            if !repeated
                && matches!(
                    ty,
                    Type::Int32
                        | Type::Int64
                        | Type::Uint32
                        | Type::Uint64
                        | Type::Bool
                        | Type::Enum
                ) =>
        {
            put_varint(buf, u64::from(field.number() as u32) << 3);
            put_varint(buf, v as u64);
        }
        FieldValue::Map(pairs)
            if repeated
                && ty == Type::Message
                && d.messages
                    .get(field.type_name())
                    .is_some_and(|m| m.options.as_ref().is_some_and(|o| o.map_entry())) =>
        {
            for (k, v) in pairs {
                let mut entry = Vec::new();
                put_bytes_field(&mut entry, 1, k.as_bytes());
                put_bytes_field(&mut entry, 2, v.as_bytes());
                put_bytes_field(buf, field.number(), &entry);
            }
        }
        FieldValue::Msg(values) if !repeated && ty == Type::Message => {
            let message = d.messages.get(field.type_name()).ok_or_else(|| {
                format!("message type {} not in the descriptors", field.type_name())
            })?;
            let mut inner = Vec::new();
            for (name, value) in values {
                let nested = message
                    .field
                    .iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| format!("{} has no field {name}", field.type_name()))?;
                encode_value(d, &mut inner, nested, value)?;
            }
            put_bytes_field(buf, field.number(), &inner);
        }
        other => {
            return Err(format!(
                "a {:?} {:?} field cannot take {other:?}",
                field.label(),
                ty
            ));
        }
    }
    Ok(())
}

/// Encodes the request of `method` from its descriptor and [`field_value`]; `Err` names a
/// field the table does not know or cannot encode.
fn encode_request(
    d: &Descriptors,
    a: &TenantA,
    method: &Method,
    omit: Option<&str>,
) -> Result<Vec<u8>, String> {
    let message = d.messages.get(&method.input).ok_or_else(|| {
        format!(
            "{}: request type {} not in the descriptors",
            method.full, method.input
        )
    })?;
    let mut fields: Vec<&FieldDescriptorProto> = message.field.iter().collect();
    fields.sort_by_key(|f| f.number());
    let mut buf = Vec::new();
    for field in fields {
        let name = field.name();
        let Some(value) = field_value(a, &method.service, name) else {
            return Err(format!(
                "unknown request field {}.{name} of {}: add it to the isolation matrix \
                 (field_value in integration/tests/isolation_matrix.rs)",
                method.input, method.full
            ));
        };
        if omit == Some(name) {
            continue;
        }
        encode_value(d, &mut buf, field, value).map_err(|problem| {
            format!(
                "request field {}.{name} of {}: {problem}: fix the isolation matrix's \
                 field_value",
                method.input, method.full
            )
        })?;
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Raw gRPC calls
// ---------------------------------------------------------------------------------------------

/// A codec that sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The answer to one call: its code (`Ok` on success), the status message and details, and
/// every response message received.
#[derive(Debug)]
struct Outcome {
    code: Code,
    message: String,
    details: Vec<u8>,
    responses: Vec<Vec<u8>>,
}

impl Outcome {
    fn failed(status: &tonic::Status, responses: Vec<Vec<u8>>) -> Outcome {
        Outcome {
            code: status.code(),
            message: status.message().to_owned(),
            details: status.details().to_vec(),
            responses,
        }
    }

    /// Everything the caller got back, as one byte string.
    fn haystack(&self) -> Vec<u8> {
        let mut all = self.message.as_bytes().to_vec();
        all.extend_from_slice(&self.details);
        for r in &self.responses {
            all.extend_from_slice(r);
        }
        all
    }
}

async fn call(
    daemon: &Daemon,
    token: &str,
    method: &Method,
    request: Vec<u8>,
    metadata: Option<&(&'static str, String)>,
) -> Outcome {
    let request = || {
        let mut r = tonic::Request::new(request.clone());
        if let Some((key, value)) = metadata {
            r.metadata_mut()
                .insert(*key, value.parse().expect("ASCII metadata value"));
        }
        r
    };
    let channel = tonic::service::interceptor::InterceptedService::new(
        daemon.channel().await,
        Auth::new(Some(token)),
    );
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("gRPC channel ready");
    let path = PathAndQuery::try_from(format!("/{}", method.full)).expect("method path");
    if !method.server_streaming {
        return match grpc.unary(request(), path, RawCodec).await {
            Ok(response) => Outcome {
                code: Code::Ok,
                message: String::new(),
                details: Vec::new(),
                responses: vec![response.into_inner()],
            },
            Err(status) => Outcome::failed(&status, Vec::new()),
        };
    }
    let streamed = async {
        let mut stream = match grpc.server_streaming(request(), path, RawCodec).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Outcome::failed(&status, Vec::new()),
        };
        let mut responses = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(message)) => responses.push(message),
                Ok(None) => {
                    return Outcome {
                        code: Code::Ok,
                        message: String::new(),
                        details: Vec::new(),
                        responses,
                    };
                }
                Err(status) => return Outcome::failed(&status, responses),
            }
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, streamed).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome {
            code: Code::DeadlineExceeded,
            message: format!("stream did not end within {CALL_TIMEOUT:?} (test-side timeout)"),
            details: Vec::new(),
            responses: Vec::new(),
        },
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

/// Checks specific to a successful call in the caller's own tenant: what it says must be the
/// caller's own (empty) state, not A's.
fn check_own_success(method: &str, caller_tenant: &str, bytes: &[u8]) -> Result<(), String> {
    let decoded = |e: prost::DecodeError| format!("undecodable response: {e}");
    match method {
        "mantle.v1.DefinitionService/PlanDefinition" => {
            let plan = pb::Plan::decode(bytes).map_err(decoded)?;
            if plan.current_version != 0 {
                return Err(format!(
                    "plan sees a stored version {} of {WORKFLOW} (A's): {plan:?}",
                    plan.current_version
                ));
            }
        }
        "mantle.v1.DefinitionService/ApplyDefinition" => {
            let r = pb::ApplyDefinitionResponse::decode(bytes).map_err(decoded)?;
            let version = r.definition.as_ref().map_or(0, |d| d.version);
            if !r.created || version != 1 {
                return Err(format!(
                    "apply in the caller's tenant did not create version 1 (continues A's?): \
                     created={} version={version}",
                    r.created
                ));
            }
        }
        "mantle.v1.DefinitionService/ListDefinitions" => {
            let r = pb::ListDefinitionsResponse::decode(bytes).map_err(decoded)?;
            if !r.definitions.is_empty() {
                return Err(format!("lists workflows: {:?}", r.definitions));
            }
        }
        "mantle.v1.ExecutionService/ListExecutions" => {
            let r = pb::ListExecutionsResponse::decode(bytes).map_err(decoded)?;
            if !r.executions.is_empty() {
                return Err(format!("lists executions: {:?}", r.executions));
            }
        }
        "mantle.v1.TriggerService/ListTriggers" => {
            let r = pb::ListTriggersResponse::decode(bytes).map_err(decoded)?;
            if !r.triggers.is_empty() {
                return Err(format!("lists triggers: {:?}", r.triggers));
            }
        }
        "mantle.v1.SecretService/ListSecrets" => {
            let r = pb::ListSecretsResponse::decode(bytes).map_err(decoded)?;
            if !r.secrets.is_empty() {
                return Err(format!("lists secrets: {:?}", r.secrets));
            }
        }
        "mantle.v1.SecretService/CreateSecret" => {
            let s = pb::Secret::decode(bytes).map_err(decoded)?;
            if s.field_names != ["intruder_field"] {
                return Err(format!("created secret is not the caller's: {s:?}"));
            }
        }
        "mantle.v1.ExecutionService/StartExecution" => {
            let e = pb::Execution::decode(bytes).map_err(decoded)?;
            if e.workflow != WORKFLOW || e.version != 1 || e.id.is_empty() {
                return Err(format!("started execution is not the caller's own: {e:?}"));
            }
        }
        "mantle.v1.SystemService/GetServerInfo" => {
            let info = pb::ServerInfo::decode(bytes).map_err(decoded)?;
            let caller = info.caller.unwrap_or_default();
            if caller.tenant != caller_tenant || caller.operator {
                return Err(format!("wrong caller: {caller:?}"));
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup and snapshots
// ---------------------------------------------------------------------------------------------

async fn new_key(
    daemon: &Daemon,
    operator: &str,
    tenant: &str,
    scopes: &[&str],
) -> (String, String) {
    let mut tenants = daemon.tenants(Some(operator)).await;
    let r = expect_ok(
        tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant.to_owned(),
                name: format!("isolation-{tenant}"),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                expire_time: None,
            })
            .await,
        "CreateApiKey",
    );
    (r.token, r.api_key.expect("api_key").id)
}

fn triggers_client(
    channel: tonic::transport::Channel,
    token: &str,
) -> TriggerServiceClient<AuthChannel> {
    TriggerServiceClient::with_interceptor(channel, Auth::new(Some(token)))
}

/// A's triggers, as A lists them.
async fn triggers_of_a(daemon: &Daemon, token: &str) -> Vec<pb::Trigger> {
    expect_ok(
        triggers_client(daemon.channel().await, token)
            .list_triggers(pb::ListTriggersRequest::default())
            .await,
        "A: ListTriggers",
    )
    .triggers
}

fn secrets_client(
    channel: tonic::transport::Channel,
    token: &str,
) -> SecretServiceClient<AuthChannel> {
    SecretServiceClient::with_interceptor(channel, Auth::new(Some(token)))
}

async fn setup_tenant_a(daemon: &Daemon, operator: &str) -> TenantA {
    create_tenant(daemon, operator, TENANT_A).await;
    let tenant_id = expect_ok(
        daemon
            .tenants(Some(operator))
            .await
            .get_tenant(pb::GetTenantRequest {
                name: TENANT_A.to_owned(),
            })
            .await,
        "GetTenant a",
    )
    .id;
    let (token, key_id) = new_key(daemon, operator, TENANT_A, &["*"]).await;
    let description_marker = random_name("descmarker");
    let output_marker = random_name("outmarker");
    let source = workflow_source(&description_marker, &output_marker);

    let mut a = Mantle::connect(daemon, &token).await;
    let definition = a.apply(&source).await;
    assert_eq!(definition.version, 1, "A's workflow version");
    let triggers = triggers_of_a(daemon, &token).await;
    assert_eq!(triggers.len(), 1, "A's triggers: {triggers:?}");
    let trigger_id = triggers[0].id.clone();
    let idempotency_key = random_name("a-idem");
    let started = expect_ok(
        a.execs
            .start_execution(pb::StartExecutionRequest {
                workflow: WORKFLOW.to_owned(),
                idempotency_key: idempotency_key.clone(),
                ..Default::default()
            })
            .await,
        "A: StartExecution",
    );
    let execution = a.wait_terminal(&started.id, Duration::from_secs(60)).await;
    assert_eq!(
        execution.status,
        pb::ExecutionStatus::Completed as i32,
        "A's execution: {execution:?}"
    );
    assert!(
        execution.outputs_json.contains(&output_marker),
        "A's execution outputs: {execution:?}"
    );

    let secret_field = format!("afield_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let secret_value = random_name("secretvalue");
    let mut secrets = secrets_client(daemon.channel().await, &token);
    expect_ok(
        secrets
            .create_secret(pb::CreateSecretRequest {
                name: SECRET.to_owned(),
                r#type: "generic".to_owned(),
                fields: HashMap::from([(secret_field.clone(), secret_value.clone())]),
            })
            .await,
        "A: CreateSecret",
    );

    TenantA {
        token,
        tenant_id,
        key_id,
        source,
        content_hash: definition.content_hash,
        description_marker,
        output_marker,
        execution_id: execution.id,
        idempotency_key,
        secret_field,
        secret_value,
        trigger_id,
    }
}

/// A's resources as A and the operator see them.
#[derive(Debug, PartialEq)]
struct Snapshot {
    execution: pb::Execution,
    attempts: Vec<pb::StepAttempt>,
    executions: Vec<String>,
    definition: pb::Definition,
    versions: Vec<i64>,
    workflows: Vec<String>,
    secret: pb::Secret,
    secrets: Vec<String>,
    tenant: pb::Tenant,
    tenants: Vec<String>,
    /// A's keys, without `last_use_time` (A's own control calls update it).
    keys: Vec<pb::ApiKey>,
    triggers: Vec<pb::Trigger>,
}

async fn snapshot(daemon: &Daemon, operator: &str, a: &TenantA) -> Snapshot {
    let mut m = Mantle::connect(daemon, &a.token).await;
    let execution = m.get(&a.execution_id).await;
    let attempts = m.attempts(&a.execution_id).await;
    let executions = expect_ok(
        m.execs
            .list_executions(pb::ListExecutionsRequest::default())
            .await,
        "A: ListExecutions",
    )
    .executions
    .into_iter()
    .map(|e| e.id)
    .collect();
    let definition = expect_ok(
        m.defs
            .get_definition(pb::GetDefinitionRequest {
                name: WORKFLOW.to_owned(),
                version: 0,
            })
            .await,
        "A: GetDefinition",
    );
    let versions = expect_ok(
        m.defs
            .list_definition_versions(pb::ListDefinitionVersionsRequest {
                name: WORKFLOW.to_owned(),
                ..Default::default()
            })
            .await,
        "A: ListDefinitionVersions",
    )
    .versions
    .into_iter()
    .map(|v| v.version)
    .collect();
    let workflows = expect_ok(
        m.defs
            .list_definitions(pb::ListDefinitionsRequest::default())
            .await,
        "A: ListDefinitions",
    )
    .definitions
    .into_iter()
    .map(|d| d.name)
    .collect();
    let mut s = secrets_client(daemon.channel().await, &a.token);
    let secret = expect_ok(
        s.get_secret(pb::GetSecretRequest {
            name: SECRET.to_owned(),
        })
        .await,
        "A: GetSecret",
    );
    let secrets = expect_ok(
        s.list_secrets(pb::ListSecretsRequest::default()).await,
        "A: ListSecrets",
    )
    .secrets
    .into_iter()
    .map(|s| s.name)
    .collect();
    let mut t = daemon.tenants(Some(operator)).await;
    let tenant = expect_ok(
        t.get_tenant(pb::GetTenantRequest {
            name: TENANT_A.to_owned(),
        })
        .await,
        "operator: GetTenant a",
    );
    let tenants = expect_ok(
        t.list_tenants(pb::ListTenantsRequest::default()).await,
        "operator: ListTenants",
    )
    .tenants
    .into_iter()
    .map(|t| t.name)
    .collect();
    let keys = expect_ok(
        t.list_api_keys(pb::ListApiKeysRequest {
            tenant: TENANT_A.to_owned(),
            show_revoked: true,
            ..Default::default()
        })
        .await,
        "operator: ListApiKeys a",
    )
    .api_keys
    .into_iter()
    .map(|k| pb::ApiKey {
        last_use_time: None,
        ..k
    })
    .collect();
    let triggers = triggers_of_a(daemon, &a.token).await;
    Snapshot {
        triggers,
        execution,
        attempts,
        executions,
        definition,
        versions,
        workflows,
        secret,
        secrets,
        tenant,
        tenants,
        keys,
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

/// Checks that [`RULES`] and the descriptors name the same methods, and that every request
/// encodes; returns the methods in the order they run.
fn plan_methods(d: &Descriptors, a: &TenantA, problems: &mut Vec<String>) -> Vec<Planned> {
    let mut planned = Vec::new();
    for method in &d.methods {
        let Some((_, rule)) = RULES.iter().find(|(name, _)| *name == method.full) else {
            problems.push(format!(
                "unknown method {}: add it to the isolation matrix (RULES in \
                 integration/tests/isolation_matrix.rs)",
                method.full
            ));
            continue;
        };
        if method.client_streaming {
            problems.push(format!(
                "{} is client-streaming: the isolation matrix does not call those yet",
                method.full
            ));
            continue;
        }
        let request = match encode_request(d, a, method, None) {
            Ok(request) => request,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        planned.push(Planned {
            method: method.clone(),
            label: method.full.clone(),
            expect: rule.expect,
            phase: rule.phase,
            control: rule.control,
            request: request.clone(),
            metadata: None,
        });
        let Some(again) = rule.again else { continue };
        planned.push(Planned {
            method: method.clone(),
            label: format!("{} (again)", method.full),
            expect: again.expect,
            phase: 2,
            control: false,
            request,
            metadata: None,
        });
        if let Some((field, key)) = again.metadata {
            let value = match field_value(a, &method.service, field) {
                Some(FieldValue::Str(value)) => value,
                other => {
                    problems.push(format!(
                        "{}: metadata variant needs a string value of {field}, not {other:?}",
                        method.full
                    ));
                    continue;
                }
            };
            match encode_request(d, a, method, Some(field)) {
                Ok(request) => planned.push(Planned {
                    method: method.clone(),
                    label: format!("{} (again, {key} metadata)", method.full),
                    expect: again.expect,
                    phase: 2,
                    control: false,
                    request,
                    metadata: Some((key, value)),
                }),
                Err(problem) => problems.push(problem),
            }
        }
    }
    for (name, _) in RULES {
        if !d.methods.iter().any(|m| m.full == *name) {
            problems.push(format!(
                "RULES names {name}, which the descriptors do not contain: remove or rename it"
            ));
        }
    }
    planned.sort_by_key(|p| p.phase);
    planned
}

/// One call of the matrix.
#[derive(Debug, Clone)]
struct Planned {
    method: Method,
    /// The method, and which variant of the call this is.
    label: String,
    expect: Expect,
    phase: u8,
    control: bool,
    request: Vec<u8>,
    metadata: Option<(&'static str, String)>,
}

/// One backend's matrix run: what it calls, and what it found.
struct Run<'a> {
    daemon: &'a Daemon,
    backend: &'a str,
    a: &'a TenantA,
    planned: Vec<Planned>,
    report: String,
    problems: Vec<String>,
}

/// Runs every method with `token` (a key of `tenant`, which is not A), records the matrix
/// rows and every problem.
async fn run_matrix(run: &mut Run<'_>, tenant: &str, token: &str) {
    let Run {
        daemon,
        backend,
        a,
        planned,
        report,
        problems,
    } = run;
    for p in planned.iter() {
        let (method, request) = (&p.method, &p.request);
        let outcome = call(daemon, token, method, request.clone(), p.metadata.as_ref()).await;
        let mut verdict = Vec::new();
        let code_ok = match p.expect {
            Expect::NotFound => outcome.code == Code::NotFound,
            Expect::Denied => outcome.code == Code::PermissionDenied,
            Expect::Own => matches!(
                outcome.code,
                Code::Ok | Code::NotFound | Code::PermissionDenied
            ),
            Expect::OwnOk => outcome.code == Code::Ok,
        };
        if !code_ok {
            verdict.push(format!(
                "expected {:?}, got {:?}: {}",
                p.expect, outcome.code, outcome.message
            ));
        }
        let haystack = outcome.haystack();
        for (label, value, from_source) in a.markers() {
            let sent = |v: &str| {
                contains(request, v) || p.metadata.as_ref().is_some_and(|(_, m)| m.contains(v))
            };
            let in_request =
                sent(&value) || (from_source && (p.phase >= 2 || sent(&a.description_marker)));
            if !in_request && contains(&haystack, &value) {
                verdict.push(format!(
                    "LEAK: the answer contains {label} ({value}); status {:?} {:?}",
                    outcome.code, outcome.message
                ));
            }
        }
        if outcome.code == Code::Ok && matches!(p.expect, Expect::Own | Expect::OwnOk) {
            for bytes in &outcome.responses {
                if let Err(problem) = check_own_success(&method.full, tenant, bytes) {
                    verdict.push(problem);
                }
            }
        }
        let _ = writeln!(
            report,
            "  {backend:<8} {tenant:<3} {:<70} {:<18} {}",
            p.label,
            format!("{:?}", outcome.code),
            if verdict.is_empty() {
                "ok".to_owned()
            } else {
                format!("FAIL: {}", verdict.join("; "))
            }
        );
        for v in verdict {
            problems.push(format!(
                "[{backend}] tenant {tenant} key → {}: {v}",
                p.label
            ));
        }
    }
}

/// The same requests of the read-only methods with A's own key must succeed: the requests do
/// reach A's resources, so the other tenant's NOT_FOUND is isolation.
async fn run_controls(run: &mut Run<'_>) {
    let Run {
        daemon,
        backend,
        a,
        planned,
        report,
        problems,
    } = run;
    for p in planned.iter().filter(|p| p.control) {
        let method = &p.method;
        let outcome = call(daemon, &a.token, method, p.request.clone(), None).await;
        let ok = outcome.code == Code::Ok && outcome.responses.iter().any(|r| !r.is_empty());
        let _ = writeln!(
            report,
            "  {backend:<8} {:<3} {:<70} {:<18} {}",
            TENANT_A,
            p.label,
            format!("{:?}", outcome.code),
            if ok { "ok (control)" } else { "FAIL (control)" }
        );
        if !ok {
            problems.push(format!(
                "[{backend}] control: {} with A's own key must succeed with A's data, got \
                 {:?} {:?} ({} messages)",
                p.label,
                outcome.code,
                outcome.message,
                outcome.responses.len()
            ));
        }
    }
}

async fn isolation_matrix(daemon: &Daemon, operator: &str, backend: &str) {
    let d = descriptors();
    assert!(
        !d.methods.is_empty(),
        "no {PACKAGE} methods in the descriptors"
    );
    let a = setup_tenant_a(daemon, operator).await;

    // B holds `*`; C holds every tenant scope by name.
    create_tenant(daemon, operator, "b").await;
    create_tenant(daemon, operator, "c").await;
    let (token_b, _) = new_key(daemon, operator, "b", &["*"]).await;
    let (token_c, _) = new_key(
        daemon,
        operator,
        "c",
        &[
            "definitions:read",
            "definitions:write",
            "executions:read",
            "executions:write",
            "secrets:read",
            "secrets:write",
        ],
    )
    .await;

    let before = snapshot(daemon, operator, &a).await;
    let mut problems = Vec::new();
    let planned = plan_methods(&d, &a, &mut problems);
    let report = format!(
        "isolation matrix ({backend}): {} methods of {PACKAGE} from the descriptors\n",
        d.methods.len()
    );
    let mut run = Run {
        daemon,
        backend,
        a: &a,
        planned,
        report,
        problems,
    };
    run_controls(&mut run).await;
    run_matrix(&mut run, "b", &token_b).await;
    run_matrix(&mut run, "c", &token_c).await;
    let Run {
        report,
        mut problems,
        ..
    } = run;

    let after = snapshot(daemon, operator, &a).await;
    if before != after {
        problems.push(format!(
            "[{backend}] tenant A's resources changed during the matrix:\nbefore: {before:#?}\nafter: {after:#?}"
        ));
    }
    // A's key still works.
    let info = daemon
        .system(Some(&a.token))
        .await
        .get_server_info(pb::GetServerInfoRequest {})
        .await;
    if let Err(status) = info {
        problems.push(format!(
            "[{backend}] A's key stopped working: {:?} {}",
            status.code(),
            status.message()
        ));
    }
    println!("{report}");
    assert!(
        problems.is_empty(),
        "{} isolation problem(s):\n{}\n\n{report}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_matrix_sqlite() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    isolation_matrix(&daemon, &operator, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_matrix_postgres() {
    let Some(db) = PgDatabase::create("isolation_matrix_postgres").await else {
        return;
    };
    let daemon = Daemon::start_ok(DaemonOptions::postgres(db.url.clone())).await;
    let operator = admin_key_create(&db.url, "it-operator").await;
    isolation_matrix(&daemon, &operator, "postgres").await;
}

/// The matrix's own bookkeeping, without a daemon: every descriptor method has a rule and
/// every request field a value (fails fast, e.g. right after a new RPC is added).
#[test]
fn isolation_rules_cover_every_method() {
    let d = descriptors();
    let a = TenantA {
        token: "t".into(),
        tenant_id: "tid".into(),
        key_id: "kid".into(),
        source: "src".into(),
        content_hash: "h".into(),
        description_marker: "d".into(),
        output_marker: "o".into(),
        execution_id: "e".into(),
        idempotency_key: "k".into(),
        secret_field: "f".into(),
        secret_value: "v".into(),
        trigger_id: "tr".into(),
    };
    let mut problems = Vec::new();
    let planned = plan_methods(&d, &a, &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(planned.len() >= d.methods.len());
    // The generic encoder writes what the generated types read.
    let request = |label: &str| {
        planned
            .iter()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("{label} not planned"))
            .request
            .as_slice()
    };
    let update = pb::UpdateTenantRequest::decode(request("mantle.v1.TenantService/UpdateTenant"))
        .expect("UpdateTenantRequest");
    assert_eq!(update.name, TENANT_A);
    assert_eq!(update.display_name.as_deref(), Some("renamed-by-intruder"));
    let settings = update.settings.expect("UpdateTenantRequest.settings");
    assert_eq!(
        (settings.max_steps_per_workflow, settings.allowed_domains),
        (1, vec!["intruder.example".to_owned()])
    );
    assert_eq!(
        update.settings_mask.expect("settings_mask").paths,
        ["max_steps_per_workflow", "allowed_domains"]
    );
    let key = pb::CreateApiKeyRequest::decode(request("mantle.v1.TenantService/CreateApiKey"))
        .expect("CreateApiKeyRequest");
    assert_eq!(
        (key.tenant.as_str(), key.scopes),
        (TENANT_A, vec!["*".to_owned()])
    );
    let secret = pb::CreateSecretRequest::decode(request("mantle.v1.SecretService/CreateSecret"))
        .expect("CreateSecretRequest");
    assert_eq!(
        (
            secret.name.as_str(),
            secret.r#type.as_str(),
            secret.fields.len()
        ),
        (SECRET, "generic", 1)
    );
    let start =
        pb::StartExecutionRequest::decode(request("mantle.v1.ExecutionService/StartExecution"))
            .expect("StartExecutionRequest");
    assert_eq!(
        (start.workflow.as_str(), start.idempotency_key.as_str()),
        (WORKFLOW, "k")
    );
    let watch =
        pb::WatchExecutionRequest::decode(request("mantle.v1.ExecutionService/WatchExecution"))
            .expect("WatchExecutionRequest");
    assert_eq!(watch.id, "e");
    assert!(
        !d.methods.is_empty(),
        "no {PACKAGE} methods in the descriptors"
    );
}
