//! The checks every request passes before a handler sees it, outermost first: the `Host`
//! header (against DNS rebinding), the `Origin` (pages of other sites), then the token, and the
//! body's size, type and arrival time. Connection limits (how many, how long for the headers)
//! are `server.rs`'s.
//!
//! Why `Host`: a web page can make its own domain resolve to 127.0.0.1 and then talk to the
//! loopback API as "same origin". Its requests still carry its domain in `Host`, so the API
//! answers only names that cannot be rebound: loopback names, IP literals it listens on, the
//! machine's own host name when it listens beyond loopback, and what `--allowed-host` adds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::NodeContext;
use crate::config::NodeConfig;
use crate::error::NodeError;

/// Request bodies larger than this are refused before reading (a long chat is far smaller).
pub(crate) const MAX_BODY: usize = 4 << 20;

/// The routes anyone may `GET` without the API token: the dashboard page and its assets carry
/// no data (every data route the page calls still needs the token).
fn is_public(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || path.starts_with("/assets/"))
}

/// What the API answers, fixed at start from the configuration.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    any_host: bool,
    /// Lower-case host names accepted besides loopback names.
    names: Vec<String>,
    /// The address the API listens on; unspecified (0.0.0.0, ::) means every local address.
    listen: IpAddr,
    any_origin: bool,
    origins: Vec<String>,
    token: Option<String>,
    body_timeout: Duration,
}

impl HttpPolicy {
    pub fn new(config: &NodeConfig, listen: SocketAddr, host_name: &str) -> HttpPolicy {
        let mut names: Vec<String> = config
            .allowed_hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        if !listen.ip().is_loopback() && !host_name.is_empty() {
            let own = host_name.to_ascii_lowercase();
            names.push(format!("{own}.local"));
            names.push(own);
        }
        HttpPolicy {
            any_host: config.allowed_hosts.iter().any(|h| h == "*"),
            names,
            listen: listen.ip(),
            any_origin: config.cors_origins.iter().any(|o| o == "*"),
            origins: config.cors_origins.clone(),
            token: config.api_token.clone(),
            body_timeout: Duration::from_secs(config.body_timeout_secs),
        }
    }

    /// Whether a `Host` header value (`name[:port]`, `[v6]:port`) is one this API answers.
    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let name = host_part(host).trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = name.parse::<IpAddr>() {
            // An address cannot be rebound; accept the ones this socket can be reached at.
            return ip.is_loopback() || ip == self.listen || self.listen.is_unspecified();
        }
        name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
    }

    /// Whether a browser page at `origin` may call the API: its own origin, or a CORS one.
    pub(crate) fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let same = host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        same || self.any_origin || self.origins.iter().any(|o| o == origin)
    }

    /// The configured CORS layer: preflights answered and headers added for the listed
    /// origins; `None` when no origin is allowed (browsers then refuse cross-origin reads).
    pub(crate) fn cors(&self) -> Option<tower_http::cors::CorsLayer> {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        if self.origins.is_empty() {
            return None;
        }
        let origin = if self.any_origin {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                self.origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            )
        };
        Some(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(Duration::from_secs(600)),
        )
    }

    /// The bearer token check: scheme case-insensitive (RFC 6750), token in constant time.
    pub(crate) fn authorized(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, given)) = value.trim().split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && bool::from(given.trim().as_bytes().ct_eq(expected.as_bytes()))
    }
}

/// `name` of `name:port`, `v6` of `[v6]:port`.
fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Outermost: counts every request, and refuses foreign `Host`s and `Origin`s.
pub(crate) async fn gate(
    State(node): State<Arc<NodeContext>>,
    req: Request,
    next: Next,
) -> Response {
    let endpoint = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let response = match check_origin(&node.http, &req) {
        Err(e) => e.into_response(),
        Ok(()) => next.run(req).await,
    };
    node.metrics.request(&endpoint, response.status().as_u16());
    response
}

fn check_origin(policy: &HttpPolicy, req: &Request) -> Result<(), NodeError> {
    let header_str = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // HTTP/1.1 has the authority in `Host`; an absolute-form request line carries it instead.
    let host = header_str(header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host
        && !policy.host_allowed(host)
    {
        let name = host_part(host);
        return Err(NodeError::Forbidden(format!(
            "requests for host `{name}` are refused: this API answers localhost, its own addresses and names given with --allowed-host (a guard against DNS rebinding); to reach it by this name, start the node with --allowed-host {name}"
        )));
    }
    if req
        .headers()
        .get(header::HOST)
        .is_some_and(|h| h.to_str().is_err())
    {
        return Err(NodeError::BadRequest("the Host header is not ASCII".into()));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("<not ASCII>");
        if !policy.origin_allowed(origin, header_str(header::HOST)) {
            return Err(NodeError::Forbidden(format!(
                "cross-origin request from `{origin}` refused: browser pages of other sites may call this API only when the node is started with --cors-origin {origin}"
            )));
        }
    }
    Ok(())
}

/// Innermost: the token, then the body: declared size, type, and arrival within the timeout.
/// The body is read here, so a handler never waits on a slow client.
pub(crate) async fn admit(
    State(node): State<Arc<NodeContext>>,
    req: Request,
    next: Next,
) -> Response {
    match admit_request(&node.http, req).await {
        Ok(req) => next.run(req).await,
        Err(NodeError::Unauthorized) => {
            let mut resp = NodeError::Unauthorized.into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rbee\""),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn admit_request(policy: &HttpPolicy, req: Request) -> Result<Request, NodeError> {
    if !is_public(req.method(), req.uri().path())
        && !policy.authorized(req.headers().get(header::AUTHORIZATION))
    {
        return Err(NodeError::Unauthorized);
    }
    if req.method() != Method::POST && req.method() != Method::PUT {
        return Ok(req);
    }
    let declared = match req.headers().get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| NodeError::BadRequest("Content-Length is not a number".into()))?,
        ),
        None => None,
    };
    if let Some(n) = declared
        && n > MAX_BODY as u64
    {
        return Err(too_large(Some(n)));
    }
    if declared != Some(0) {
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ctype.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            let got = if ctype.is_empty() {
                "none".to_string()
            } else {
                format!("`{ctype}`")
            };
            return Err(NodeError::UnsupportedMediaType(format!(
                "request bodies must be JSON: send `Content-Type: application/json` (got {got})"
            )));
        }
    }
    let (parts, body) = req.into_parts();
    let timeout = policy.body_timeout;
    let bytes = match tokio::time::timeout(timeout, read_capped(body)).await {
        Err(_) => {
            return Err(NodeError::RequestTimeout(format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            )));
        }
        Ok(read) => read?,
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The whole body, refused as soon as it grows past [`MAX_BODY`] (chunked bodies declare no
/// length up front).
async fn read_capped(body: Body) -> Result<Vec<u8>, NodeError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| NodeError::BadRequest(format!("reading the request body failed: {e}")))?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(too_large(None));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn too_large(declared: Option<u64>) -> NodeError {
    let what = declared.map_or_else(
        || "the request body is".to_string(),
        |n| format!("the request body is {n} bytes,"),
    );
    NodeError::BodyTooLarge(format!(
        "{what} over the limit of {MAX_BODY} bytes (4 MiB); send a shorter prompt"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_and_its_assets_are_public() {
        use axum::http::Method;
        assert!(is_public(&Method::GET, "/"));
        assert!(is_public(&Method::HEAD, "/assets/app-1.js"));
        assert!(!is_public(&Method::GET, "/v1/pool"));
        assert!(!is_public(&Method::GET, "/api/tags"));
        assert!(!is_public(&Method::POST, "/"));
    }

    fn policy(config: NodeConfig, listen: &str) -> HttpPolicy {
        HttpPolicy::new(&config, listen.parse().unwrap(), "homelab")
    }

    #[test]
    fn only_names_that_cannot_be_rebound_reach_a_loopback_api() {
        let p = policy(NodeConfig::default(), "127.0.0.1:7835");
        for ok in [
            "127.0.0.1:7835",
            "localhost:7835",
            "LOCALHOST",
            "[::1]:7835",
            "app.localhost",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7835",
            "homelab:7835",
            "192.168.1.5:7835",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let p = policy(
            NodeConfig {
                allowed_hosts: vec!["rbee.lan".into()],
                ..Default::default()
            },
            "127.0.0.1:7835",
        );
        assert!(p.host_allowed("RBEE.lan:7835"));
        assert!(!p.host_allowed("other.lan"));
        let any = policy(
            NodeConfig {
                allowed_hosts: vec!["*".into()],
                ..Default::default()
            },
            "127.0.0.1:7835",
        );
        assert!(any.host_allowed("whatever.example"));
    }

    #[test]
    fn a_lan_api_answers_its_addresses_and_host_name() {
        let p = policy(NodeConfig::default(), "0.0.0.0:7835");
        assert!(p.host_allowed("192.168.1.5:7835"));
        assert!(p.host_allowed("homelab:7835"));
        assert!(p.host_allowed("homelab.local"));
        assert!(!p.host_allowed("evil.example"));
        let p = policy(NodeConfig::default(), "192.168.1.5:7835");
        assert!(p.host_allowed("192.168.1.5"));
        assert!(!p.host_allowed("10.0.0.9"));
    }

    #[test]
    fn pages_of_other_origins_are_refused_unless_listed() {
        let p = policy(NodeConfig::default(), "127.0.0.1:7835");
        assert!(p.origin_allowed("http://127.0.0.1:7835", Some("127.0.0.1:7835")));
        assert!(!p.origin_allowed("http://evil.example", Some("127.0.0.1:7835")));
        assert!(!p.origin_allowed("null", Some("127.0.0.1:7835")));
        assert!(p.cors().is_none());
        let p = policy(
            NodeConfig {
                cors_origins: vec!["http://localhost:3000".into()],
                ..Default::default()
            },
            "127.0.0.1:7835",
        );
        assert!(p.origin_allowed("http://localhost:3000", Some("127.0.0.1:7835")));
        assert!(!p.origin_allowed("http://localhost:3001", Some("127.0.0.1:7835")));
        assert!(p.cors().is_some());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let p = policy(
            NodeConfig {
                api_token: Some("s3cret".into()),
                ..Default::default()
            },
            "127.0.0.1:7835",
        );
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(p.authorized(Some(&h("Bearer s3cret"))));
        assert!(p.authorized(Some(&h("bearer s3cret"))));
        assert!(p.authorized(Some(&h("BEARER  s3cret"))));
        assert!(!p.authorized(Some(&h("Bearer s3cre"))));
        assert!(!p.authorized(Some(&h("Bearer s3crett"))));
        assert!(!p.authorized(Some(&h("Basic s3cret"))));
        assert!(!p.authorized(Some(&h("s3cret"))));
        assert!(!p.authorized(None));
        assert!(policy(NodeConfig::default(), "127.0.0.1:7835").authorized(None));
    }
}
