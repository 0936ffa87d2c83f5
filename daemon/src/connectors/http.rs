//! `http/request`: outbound HTTP with an SSRF guard that checks every resolved address
//! (after DNS, and again on every redirect), a response size cap, an installation-wide
//! budget of buffered response bytes, and cancellation.
//!
//! Proxy variables of the environment (`HTTP_PROXY`, `HTTPS_PROXY`, ...) are ignored: through
//! a proxy the guard would only see the proxy's address. An operator may name one with
//! `MANTLE_HTTP_PROXY`; then each target host is resolved and checked here before the
//! request goes to the proxy (which resolves it again).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::net::NetworkPolicy;
use super::params::{self, StatusList, Text, inline_schema, schema_of};
use super::status::StatusSet;
use super::{ActionError, ActionSpec, Credential, Effect, Invocation, Run, Setup, credentials};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;
const MAX_REDIRECTS: usize = 10;

const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `http/request`.
pub const SPEC: ActionSpec = ActionSpec {
    name: "http/request",
    description: "Sends an HTTP request; outputs {status, headers, body, url} (body parsed when JSON), also when the status fails the step.",
    params: schema_of::<Params>,
    output: schema_of::<Output>,
    credential_types: &[
        &credentials::BEARER,
        &credentials::BASIC,
        &credentials::HEADER,
    ],
    logs: false,
    tools: false,
    run: Run::Effect(build),
};

/// `http/request`'s params.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("allOf" = [{"not": {"required": ["body", "json"]}}]))]
struct Params {
    /// absolute http:// or https:// URL
    url: String,
    /// HTTP method (default GET)
    method: Option<Method>,
    /// request headers
    headers: Option<BTreeMap<String, Text>>,
    /// query parameters added to the URL
    query: Option<BTreeMap<String, Text>>,
    /// raw request body
    body: Option<Body>,
    /// a value sent as a JSON body
    json: Option<Value>,
    /// request timeout (default 30s)
    timeout: Option<params::Duration>,
    /// follow redirects (default true, at most 10)
    follow_redirects: Option<bool>,
    /// response size cap (default 10 MiB)
    max_response_bytes: Option<u64>,
    /// statuses that count as success, such as [200-299, 404] (default: below 400)
    ok_status: Option<StatusList>,
}

/// `http/request`'s output, also when the status fails the step.
#[derive(Serialize, JsonSchema)]
struct Output {
    /// the response's status
    status: u16,
    /// the response's headers, names in lower case (repeated ones joined by ", ")
    headers: BTreeMap<String, String>,
    /// the body: parsed when it is JSON, else text
    body: Value,
    /// the URL that answered, after redirects, credentials removed
    url: String,
}

/// An HTTP method: one of [`HTTP_METHODS`] in a file; any method, in any case, from an
/// expression.
struct Method(reqwest::Method);

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let text = String::deserialize(d)?;
        reqwest::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
            .map(Method)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an HTTP method")))
    }
}

inline_schema!(Method, {"type": "string", "enum": HTTP_METHODS});

/// A raw body: text only.
struct Body(String);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Body(s)),
            _ => Err(serde::de::Error::custom(
                "expected a string; use json for structured bodies",
            )),
        }
    }
}

inline_schema!(Body, {"type": "string"});

fn build(setup: &Setup) -> Result<std::sync::Arc<dyn Effect>, String> {
    Ok(std::sync::Arc::new(HttpConnector::new(
        setup.outbound.clone(),
        setup.max_buffered_bytes,
    )?))
}

#[async_trait::async_trait]
impl Effect for HttpConnector {
    async fn run(&self, inv: Invocation) -> Result<Value, ActionError> {
        HttpConnector::run(self, inv).await
    }
}

/// Where outbound requests may go, and how.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    pub policy: NetworkPolicy,
    /// `MANTLE_HTTP_PROXY`: every request goes through it.
    pub proxy: Option<url::Url>,
}

/// The network policy or the tenant's allowed domains refused a target: no retry can fix it.
#[derive(Debug)]
struct PolicyRefusal(String);

impl std::fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyRefusal {}

/// Whether a response with this status may succeed if sent again: 408 (request timeout),
/// 429 (too many requests) and every 5xx.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Resolves names, then refuses addresses the policy forbids (the proxy's own name, an
/// operator's choice, is exempt).
struct GuardedResolver {
    policy: NetworkPolicy,
    proxy_host: Option<String>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = if self
            .proxy_host
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case(name.as_str()))
        {
            NetworkPolicy {
                allow_private: true,
            }
        } else {
            self.policy
        };
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} did not resolve to any address").into());
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let reason = refused.unwrap_or_default();
                return Err(
                    Box::new(PolicyRefusal(format!("host {host} resolves to {reason}"))) as _,
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The HTTP action. Redirects are followed by hand, so each hop is checked.
pub struct HttpConnector {
    client: reqwest::Client,
    outbound: Outbound,
    /// Response bytes all attempts may hold at once (`MANTLE_HTTP_MAX_BUFFERED_BYTES`).
    buffered: Arc<Semaphore>,
    max_buffered: u64,
}

impl HttpConnector {
    pub fn new(outbound: Outbound, max_buffered_bytes: u64) -> Result<HttpConnector, String> {
        let max_buffered = max_buffered_bytes.min(Semaphore::MAX_PERMITS as u64);
        Ok(HttpConnector {
            client: guarded_client(&outbound)?,
            outbound,
            buffered: Arc::new(Semaphore::new(max_buffered as usize)),
            max_buffered,
        })
    }

    pub async fn run(&self, inv: Invocation) -> Result<Value, ActionError> {
        let cancel = inv.cancel.clone();
        tokio::select! {
            result = self.request(inv) => result,
            () = cancel.cancelled() => Err(ActionError::transient("cancelled")),
        }
    }

    async fn request(&self, inv: Invocation) -> Result<Value, ActionError> {
        // Bad params and refused targets fail at once: no attempt can fix them.
        let Request {
            mut url,
            method,
            follow,
            timeout,
            max_bytes,
            mut headers_out,
            mut body,
            ok_status,
        } = Request::parse(&inv.params).map_err(ActionError::permanent)?;
        check_url(&url, self.outbound.policy)
            .map_err(|e| ActionError::permanent(format!("params.url: {e}")))?;
        check_allowed(&url, inv.allowed_domains.as_ref().map(|v| v.as_slice()))
            .map_err(|e| ActionError::permanent(format!("params.url: {e}")))?;
        // Redirects are followed here, not by the client, so every hop is checked against
        // the network policy and the tenant's allowed domains.
        let mut method = method;
        let mut credential = inv.credential.as_ref();
        let mut hops = 0;
        let response = loop {
            check_target(&url, &self.outbound)
                .await
                .map_err(ActionError::permanent)?;
            let mut req = self
                .client
                .request(method.clone(), url.clone())
                .timeout(timeout);
            for (k, v) in &headers_out {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some((content_type, text)) = &body {
                if let Some(ct) = content_type {
                    req = req.header(reqwest::header::CONTENT_TYPE, *ct);
                }
                req = req.body(text.clone());
            }
            if let Some(cred) = credential {
                req = apply_credential(req, cred).map_err(ActionError::permanent)?;
            }
            let response = req
                .send()
                .await
                .map_err(|e| describe_send_error(&method, &url, &e))?;
            let status = response.status();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let (true, true, Some(location)) = (follow, status.is_redirection(), location) else {
                break response;
            };
            hops += 1;
            let refused = |why: String| {
                ActionError::permanent(format!(
                    "{method} {}: redirect to {location:?} refused: {why}",
                    redact_url(&url)
                ))
            };
            if hops > MAX_REDIRECTS {
                return Err(refused(format!("more than {MAX_REDIRECTS} redirects")));
            }
            let next = url
                .join(&location)
                .map_err(|e| refused(format!("not a URL: {e}")))?;
            check_url(&next, self.outbound.policy).map_err(refused)?;
            check_allowed(&next, inv.allowed_domains.as_ref().map(|v| v.as_slice()))
                .map_err(refused)?;
            if status == reqwest::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST)
            {
                method = reqwest::Method::GET;
                body = None;
            }
            if next.origin() != url.origin() {
                // Credentials are for the origin they were meant for: the step's and any
                // written into its headers.
                credential = None;
                headers_out.retain(|(k, _)| {
                    !["authorization", "cookie", "proxy-authorization"]
                        .iter()
                        .any(|sensitive| k.eq_ignore_ascii_case(sensitive))
                });
            }
            url = next;
        };
        let status = response.status();
        let final_url = response.url().clone();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in response.headers() {
            let v = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|existing| {
                    existing.push_str(", ");
                    existing.push_str(&v);
                })
                .or_insert_with(|| v.clone().into_owned());
        }
        let is_json = headers
            .get("content-type")
            .is_some_and(|ct| ct.contains("json"));
        // A body over the cap stays over it; running out of buffer room may pass.
        let (body, _held) = self.read_capped(response, max_bytes).await?;
        let body = if is_json {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&body).into_owned())
        };
        let out = Output {
            status: status.as_u16(),
            headers,
            body,
            url: redact_url(&final_url),
        };
        let out = serde_json::to_value(out).expect("an output serializes");
        let ok = match &ok_status {
            Some(set) => set.contains(status.as_u16()),
            None => status.as_u16() < 400,
        };
        if ok {
            return Ok(out);
        }
        // Redact before cutting: a secret split by the cut would no longer match.
        let redactor = inv
            .credential
            .as_ref()
            .map(super::redact::Redactor::for_credential)
            .unwrap_or_default();
        let snippet = match &out["body"] {
            Value::String(s) if !s.is_empty() => {
                format!(": {}", truncate(&redactor.text(s), 200))
            }
            Value::String(_) => String::new(),
            other => format!(": {}", truncate(&redactor.text(&other.to_string()), 200)),
        };
        let why = if ok_status.is_some() {
            " (not in ok_status)"
        } else {
            ""
        };
        Err(ActionError {
            message: format!(
                "{method} {} answered {status}{why}{snippet}",
                redact_url(&final_url)
            ),
            retryable: retryable_status(status.as_u16()),
            status: Some(status.as_u16()),
            output: Some(out),
        })
    }
}

/// An `http/request` step's params, checked.
struct Request {
    url: reqwest::Url,
    method: reqwest::Method,
    follow: bool,
    timeout: Duration,
    max_bytes: u64,
    headers_out: Vec<(String, String)>,
    /// The content type to send, if the body sets one, and the body.
    body: Option<(Option<&'static str>, String)>,
    /// Statuses that count as success; `None`: every status below 400.
    ok_status: Option<StatusSet>,
}

impl Request {
    /// Errors name the param (`params.url: ...`).
    fn parse(p: &Map<String, Value>) -> Result<Request, String> {
        let Params {
            url: url_text,
            method,
            headers,
            query,
            body,
            json,
            timeout,
            follow_redirects,
            max_response_bytes,
            ok_status,
        } = params::parse(p)?;
        let mut url = reqwest::Url::parse(&url_text)
            .map_err(|e| format!("params.url: {url_text:?} is not a URL: {e}"))?;
        if let Some(query) = query {
            let mut pairs = url.query_pairs_mut();
            for (k, Text(v)) in &query {
                pairs.append_pair(k, v);
            }
        }
        let headers_out: Vec<(String, String)> = headers
            .into_iter()
            .flatten()
            .map(|(k, Text(v))| (k, v))
            .collect();
        let body = match (body, json) {
            (Some(_), Some(_)) => {
                return Err("params: body and json are mutually exclusive".to_owned());
            }
            (Some(Body(text)), None) => Some((None, text)),
            (None, Some(json)) => Some((Some("application/json"), json.to_string())),
            (None, None) => None,
        };
        Ok(Request {
            url,
            method: method.map_or(reqwest::Method::GET, |m| m.0),
            follow: follow_redirects.unwrap_or(true),
            timeout: timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
            max_bytes: max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            headers_out,
            body,
            ok_status: ok_status.map(|s| s.0),
        })
    }
}

/// An HTTP client whose every connection goes through the network policy (checked after
/// DNS resolution), and which follows no redirects by itself. It ignores the environment's
/// proxy variables; with `outbound.proxy` every request goes through that proxy, and the
/// caller checks each target with [`check_target`] first.
pub fn guarded_client(outbound: &Outbound) -> Result<reqwest::Client, String> {
    // The process's TLS provider, when nothing installed one before (`mantle` does at start;
    // an engine built in a test does not).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: outbound.policy,
            proxy_host: outbound
                .proxy
                .as_ref()
                .and_then(|p| p.host_str().map(str::to_owned)),
        }))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mantle/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10));
    if let Some(proxy) = &outbound.proxy {
        builder = builder.proxy(
            reqwest::Proxy::all(proxy.as_str()).map_err(|e| format!("MANTLE_HTTP_PROXY: {e}"))?,
        );
    }
    builder
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))
}

/// Through a proxy, the resolver sees only the proxy: the target's own addresses are
/// resolved and checked here, and every one must be allowed. Without a proxy the resolver
/// checks them as it connects.
pub async fn check_target(url: &reqwest::Url, outbound: &Outbound) -> Result<(), String> {
    if outbound.proxy.is_none() || outbound.policy.allow_private {
        return Ok(());
    }
    let Some(url::Host::Domain(host)) = url.host() else {
        // IP literals were checked with the URL.
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{}: cannot resolve {host}: {e}", redact_url(url)))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} did not resolve to any address"));
    }
    for addr in addrs {
        outbound
            .policy
            .check(addr.ip())
            .map_err(|e| format!("host {host} resolves to {e}"))?;
    }
    Ok(())
}

/// Scheme and IP-literal checks; names are checked by the resolver after DNS.
pub fn check_url(url: &reqwest::Url, policy: NetworkPolicy) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme {other:?} is not allowed; use http or https"
            ));
        }
    }
    match url.host() {
        None => Err("the URL has no host".to_owned()),
        Some(url::Host::Ipv4(ip)) => policy.check(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => policy.check(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => Ok(()),
    }
}

/// Checks a URL's host against a tenant's allowed domains (`None`: any host).
fn check_allowed(url: &reqwest::Url, allowed: Option<&[String]>) -> Result<(), String> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let host = url.host_str().unwrap_or_default();
    if super::net::domain_allowed(host, allowed) {
        Ok(())
    } else {
        Err(format!(
            "host {host} is not in the tenant's allowed domains"
        ))
    }
}

fn apply_credential(
    req: reqwest::RequestBuilder,
    cred: &Credential,
) -> Result<reqwest::RequestBuilder, String> {
    let field = |name: &str| {
        cred.fields.get(name).ok_or_else(|| {
            format!(
                "credential {:?} of type {} has no field {name:?}",
                cred.name, cred.kind
            )
        })
    };
    match cred.kind.as_str() {
        "bearer" => Ok(req.bearer_auth(field("token")?)),
        "basic" => Ok(req.basic_auth(field("username")?, Some(field("password")?))),
        "header" => Ok(req.header(field("name")?.as_str(), field("value")?.as_str())),
        other => Err(format!(
            "credential {:?} has type {other}; http/request uses bearer, basic or header credentials",
            cred.name
        )),
    }
}

/// How long a response waits for room in the buffered-bytes budget before it fails.
const BUFFER_WAIT: Duration = Duration::from_secs(10);

impl HttpConnector {
    /// Reads the body, at most `max` bytes, holding room for it in the installation's budget
    /// of buffered response bytes (returned with it: the room is held until it is dropped).
    /// A known length takes its room at once, waiting for it; a streamed body takes room
    /// chunk by chunk. Waiting longer than [`BUFFER_WAIT`] fails the step, so the daemon
    /// never holds more than the budget, whatever steps run at once.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        max: u64,
    ) -> Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), ActionError> {
        if let Some(len) = response.content_length()
            && len > max
        {
            return Err(ActionError::permanent(format!(
                "the response body is {len} bytes, over max_response_bytes ({max})"
            )));
        }
        let mut held = Vec::new();
        if let Some(len) = response.content_length() {
            held.push(self.room(len).await?);
        }
        let reserved = response.content_length().unwrap_or(0);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
        {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(ActionError::permanent(format!(
                    "the response body is over max_response_bytes ({max})"
                )));
            }
            let beyond = (body.len() as u64 + chunk.len() as u64).saturating_sub(reserved);
            let had = (body.len() as u64).saturating_sub(reserved);
            if beyond > had {
                held.push(self.room(beyond - had).await?);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, held))
    }

    /// Room for `bytes` more in the budget, waiting at most [`BUFFER_WAIT`] for it.
    async fn room(&self, bytes: u64) -> Result<OwnedSemaphorePermit, String> {
        let max = self.max_buffered;
        let exhausted = || {
            metrics::counter!("mantle_http_buffer_refusals_total").increment(1);
            format!(
                "the daemon's budget of buffered response bytes ({max} bytes, \
                 MANTLE_HTTP_MAX_BUFFERED_BYTES) has no room for {bytes} more bytes: \
                 other steps hold it"
            )
        };
        if bytes > max || bytes > u64::from(u32::MAX) {
            return Err(exhausted());
        }
        let wanted = bytes as u32;
        if let Ok(permit) = self.buffered.clone().try_acquire_many_owned(wanted) {
            return Ok(permit);
        }
        match tokio::time::timeout(
            BUFFER_WAIT,
            self.buffered.clone().acquire_many_owned(wanted),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(exhausted()),
        }
    }
}

/// A failed send: retryable (a timeout, a refused connection, DNS, TLS), unless the
/// network policy refused the address the name resolved to.
pub(super) fn describe_send_error(
    method: &reqwest::Method,
    url: &reqwest::Url,
    e: &reqwest::Error,
) -> ActionError {
    let mut msg = format!("{method} {}: ", redact_url(url));
    if e.is_timeout() {
        msg.push_str("timed out");
        return ActionError::transient(msg);
    }
    // The innermost cause is the one that says what happened (refused address, DNS, TLS).
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    let mut last = e.to_string();
    let mut refused = false;
    while let Some(c) = cause {
        last = c.to_string();
        refused |= c.is::<PolicyRefusal>();
        cause = c.source();
    }
    msg.push_str(&last);
    if refused {
        ActionError::permanent(msg)
    } else {
        ActionError::transient(msg)
    }
}

/// A URL without its userinfo.
pub(super) fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}
