//! Tower layers in front of every gRPC service: authentication and request metrics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::Authenticator;
use crate::tenancy::audit::Audit;
use crate::tenancy::ratelimit::{Decision, RateLimiter};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Paths that need a token: every `mantle.v1` service. Health and reflection stay open.
fn needs_auth(path: &str) -> bool {
    path.starts_with("/mantle.v1.")
}

/// Authenticates requests to Mantle services and puts the [`crate::auth::Caller`] into the
/// request extensions, where handlers find it.
#[derive(Clone)]
pub struct AuthLayer {
    pub authenticator: Authenticator,
    pub limiter: RateLimiter,
    pub audit: Audit,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
            limiter: self.limiter.clone(),
            audit: self.audit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
    limiter: RateLimiter,
    audit: Audit,
}

/// The `x-ratelimit-*` metadata (and `retry-after` when refused).
fn rate_headers(headers: &mut http::HeaderMap, d: &Decision) {
    let mut set = |name: &'static str, value: u64| {
        if let Ok(v) = http::HeaderValue::from_str(&value.to_string()) {
            headers.insert(name, v);
        }
    };
    set("x-ratelimit-limit", u64::from(d.limit));
    set("x-ratelimit-remaining", u64::from(d.remaining));
    set("x-ratelimit-reset", d.reset.as_secs_f64().ceil() as u64);
    if !d.allowed {
        set(
            "retry-after",
            d.retry_after.as_secs_f64().ceil().max(1.0) as u64,
        );
    }
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !needs_auth(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let authenticator = self.authenticator.clone();
        let limiter = self.limiter.clone();
        let audit = self.audit.clone();
        // Unknown paths are authenticated like any other, and answered UNIMPLEMENTED; their
        // caller-chosen names are never recorded.
        let method = super::methods::lookup(req.uri().path());
        Box::pin(async move {
            let headers = req.headers();
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let result = authenticator
                .authenticate(header("authorization"), header("x-mantle-tenant"))
                .await;
            let caller = match result {
                Ok(caller) => caller,
                Err(err) => {
                    // Counted, not written row by row: anyone can send these.
                    metrics::counter!(
                        "mantle_unauthenticated_requests_total",
                        "method" => method.map_or("unknown", |(m, _)| m)
                    )
                    .increment(1);
                    return Ok(Status::from(err).into_http());
                }
            };
            let kind = method.map(|(_, k)| k);
            let rate_limited = kind.is_some_and(|k| k.rate_limited());
            let decision = match (&caller.tenant, rate_limited) {
                (Some(tenant), true) => match limiter.check(tenant.id).await {
                    Ok(d) => d,
                    Err(err) => {
                        tracing::error!(error = %err, "rate limiter unavailable");
                        return Ok(Status::unavailable("rate limiter unavailable").into_http());
                    }
                },
                _ => None,
            };
            if let Some(d) = decision.filter(|d| !d.allowed) {
                metrics::counter!("mantle_rate_limited_total", "tenant_id" => caller.tenant.as_ref().map(|t| t.id.to_string()).unwrap_or_default()).increment(1);
                let mut response = Status::resource_exhausted(format!(
                    "rate limit of {} requests per minute exceeded; retry in {}s",
                    d.limit,
                    d.retry_after.as_secs_f64().ceil().max(1.0)
                ))
                .into_http::<Body>();
                rate_headers(response.headers_mut(), &d);
                if let Some((name, k)) = method
                    && k.audited_here()
                {
                    audit.record_rpc(&caller, name, "RESOURCE_EXHAUSTED");
                }
                return Ok(response);
            }
            let audited = method
                .filter(|(_, k)| k.audited_here())
                .map(|(name, _)| (name, caller.clone()));
            req.extensions_mut().insert(caller);
            let mut response = inner.call(req).await?;
            if let Some((name, caller)) = audited {
                // Unary answers carry an error's code in the headers; none means OK.
                let code = grpc_code(response.headers()).unwrap_or(tonic::Code::Ok);
                audit.record_rpc(&caller, name, code_name(code));
            }
            if let Some(d) = decision {
                rate_headers(response.headers_mut(), &d);
            }
            Ok(response)
        })
    }
}

/// Counts gRPC requests and observes their latency by method and status code. The code
/// comes from the response headers (errors) or the trailers at the end of the body.
#[derive(Clone)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for MetricsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let is_grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let method = req.uri().path().trim_start_matches('/').to_owned();
        // The clock starts before the handler runs: the figure is what the caller waited.
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            if !is_grpc {
                return Ok(response);
            }
            let pending = Pending { method, start };
            if let Some(code) = grpc_code(response.headers()) {
                pending.record(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = MeteredBody {
                inner: body,
                pending: Some(pending),
            };
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

struct Pending {
    method: String,
    start: Instant,
}

impl Pending {
    fn record(self, code: tonic::Code) {
        // Unknown methods would let any client create label values: fold them into one.
        let method = if code == tonic::Code::Unimplemented {
            "unknown".to_owned()
        } else {
            self.method
        };
        let code = code_name(code);
        let labels = [("method", method), ("code", code.to_owned())];
        metrics::counter!("mantle_grpc_requests_total", &labels).increment(1);
        metrics::histogram!("mantle_grpc_request_duration_seconds", &labels)
            .record(self.start.elapsed().as_secs_f64());
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(value))
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the request when its trailers pass, or when it is
    /// dropped early (the client went away: CANCELLED).
    struct MeteredBody {
        #[pin]
        inner: Body,
        pending: Option<Pending>,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.record(tonic::Code::Cancelled);
            }
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(code) = f.trailers_ref().and_then(grpc_code)
                    && let Some(p) = this.pending.take()
                {
                    p.record(code);
                }
            }
            Some(Err(status)) => {
                if let Some(p) = this.pending.take() {
                    p.record(status.code());
                }
            }
            None => {
                if let Some(p) = this.pending.take() {
                    p.record(tonic::Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mantle_services_need_auth() {
        assert!(needs_auth("/mantle.v1.TenantService/CreateTenant"));
        assert!(!needs_auth("/grpc.health.v1.Health/Check"));
        assert!(!needs_auth(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!needs_auth("/metrics"));
    }

    #[test]
    fn grpc_status_header_parses() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_code(&h), None);
        h.insert("grpc-status", "7".parse().unwrap());
        assert_eq!(grpc_code(&h), Some(tonic::Code::PermissionDenied));
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
    }

    /// The histogram holds the handler's time, not only the body's: a handler that takes
    /// 150 ms before it answers (with the status in the headers) is observed as ≥ 150 ms.
    #[test]
    fn request_duration_includes_the_handler() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let slow = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", "0".parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = MetricsLayer.layer(slow);
        let request = Request::builder()
            .uri("/mantle.v1.ExecutionService/GetExecution")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(service.call(request)).unwrap();
        });
        let text = handle.render();
        let sum: f64 = text
            .lines()
            .find(|l| l.starts_with("mantle_grpc_request_duration_seconds_sum"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no duration sum in:\n{text}"));
        assert!(sum >= 0.15, "observed {sum} s for a 150 ms handler");
    }
}
