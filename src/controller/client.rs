//! The HTTP client of the controller protocol (see `openapi.yaml`): outbound HTTPS
//! with rustls, a bearer token on every call, timeouts on every call, bodies read with
//! a size limit, and errors that say what to fix.

use crate::config::ControllerConfig;
use crate::desired::MAX_DOCUMENT_BYTES;
use reqwest::{header, StatusCode, Url};
use std::fmt;
use std::time::Duration;

/// Limit for connecting to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for a report.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// What a long poll may take beyond its `wait` before it counts as hung.
const POLL_MARGIN: Duration = Duration::from_secs(5);

/// The controller's bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {timeout_s}s")]
    Timeout { url: String, timeout_s: u64 },
    #[error("{url} answered {status}: the token in [controller] token_file is {what}")]
    Unauthorized {
        url: String,
        status: u16,
        what: &'static str,
    },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} answered {status}: busy, asked to come back in {retry_after_s}s")]
    Busy {
        url: String,
        status: u16,
        retry_after_s: u64,
    },
    #[error("TLS with {url} failed: {reason}; {hint}")]
    Tls {
        url: String,
        reason: String,
        hint: &'static str,
    },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("cannot read the answer of {url}: {reason}")]
    Read { url: String, reason: String },
}

impl CallError {
    /// How long the controller asked the agent to stay away (`Retry-After` on a 429 or
    /// 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Busy { retry_after_s, .. } => Some(Duration::from_secs(*retry_after_s)),
            _ => None,
        }
    }

    /// Whether the error needs a fix of the configuration (token, CA, client
    /// certificate) rather than patience.
    pub fn is_auth(&self) -> bool {
        matches!(self, CallError::Unauthorized { .. } | CallError::Tls { .. })
    }
}

/// What a long poll brought.
#[derive(Debug)]
pub enum Poll {
    /// A document (not parsed yet), with the generation from its ETag if any.
    Document(bytes::Bytes),
    /// No newer document within the wait.
    Unchanged,
}

/// How the controller took a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Accepted (2xx): its events are delivered, and the next report may carry only
    /// what changed since this one.
    Accepted,
    /// 409 Conflict: the controller does not hold the report a change report builds on
    /// (it restarted, or lost it), or wants everything; the agent sends a full report
    /// at once. Nothing of the refused report counts as delivered.
    WantsFull,
}

/// The longest `Retry-After` the agent honours: a controller that asks for more is
/// still called again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The controller, as the agent calls it.
pub struct Client {
    http: reqwest::Client,
    desired_url: Url,
    report_url: Url,
    token: Token,
    poll_wait: Duration,
}

impl Client {
    /// Builds the client: reads the token (which must not be readable by others), the
    /// CA and the client certificate.
    pub fn new(config: &ControllerConfig, node_id: &str) -> anyhow::Result<Client> {
        use anyhow::Context;
        let token = read_private(&config.token_file, "[controller] token_file")?;
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ker-agent/", env!("CARGO_PKG_VERSION")))
            .https_only(config.url.scheme() == "https")
            // Redirects could take the token elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        let mut builder = crate::https::trusting(
            builder,
            config.url.scheme(),
            config.ca_file.as_deref(),
            "[controller] ca_file",
        )
        .map_err(anyhow::Error::msg)?;
        if let Some((cert, key)) = &config.client_identity {
            let mut pem = std::fs::read(cert)
                .with_context(|| format!("cannot read [controller] client_cert {}", cert.display()))?;
            let key_pem = read_private(key, "[controller] client_key")?;
            pem.extend_from_slice(b"\n");
            pem.extend_from_slice(key_pem.0.as_bytes());
            let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "[controller] client_cert {} and client_key {} are not a valid PEM certificate and key",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().with_context(|| match &config.client_identity {
            Some((cert, key)) => format!(
                "cannot build the HTTPS client for the controller with [controller] client_cert {} and client_key {}",
                cert.display(),
                key.display()
            ),
            None if config.ca_file.is_none() => "cannot build the HTTPS client for the controller \
                 from the system's trust roots (install ca-certificates, or name the \
                 controller's CA in [controller] ca_file)"
                .to_string(),
            None => "cannot build the HTTPS client for the controller".to_string(),
        })?;
        let node_url = |last: &str| -> anyhow::Result<Url> {
            let mut url = config.url.clone();
            url.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("[controller] url {} cannot have a path", config.url))?
                .pop_if_empty()
                .extend(["v1", "nodes", node_id, last]);
            Ok(url)
        };
        let mut desired_url = node_url("desired-state")?;
        desired_url
            .query_pairs_mut()
            .append_pair("wait", &format!("{}ms", config.poll_wait.as_millis()));
        Ok(Client {
            http,
            desired_url,
            report_url: node_url("report")?,
            token,
            poll_wait: config.poll_wait,
        })
    }

    /// One long poll: the document when its generation differs from `seen`, or
    /// `Unchanged` when the controller held the request for its wait.
    pub async fn poll(&self, seen: Option<u64>) -> Result<Poll, CallError> {
        let url = self.desired_url.as_str();
        let timeout = self.poll_wait + POLL_MARGIN;
        let mut request = self
            .http
            .get(self.desired_url.clone())
            .bearer_auth(&self.token.0)
            .header(header::ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(generation) = seen {
            request = request.header(header::IF_NONE_MATCH, format!("\"{generation}\""));
        }
        let response = request.send().await.map_err(|e| failure(url, timeout, e))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Poll::Unchanged),
            StatusCode::OK => Ok(Poll::Document(read_body(response, url, timeout).await?)),
            status => Err(status_error(url, status, response).await),
        }
    }

    /// Posts a report (already gzip-compressed JSON).
    pub async fn report(&self, gzipped: Vec<u8>) -> Result<Reported, CallError> {
        let url = self.report_url.as_str();
        let response = self
            .http
            .post(self.report_url.clone())
            .bearer_auth(&self.token.0)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .timeout(CALL_TIMEOUT)
            .body(gzipped)
            .send()
            .await
            .map_err(|e| failure(url, CALL_TIMEOUT, e))?;
        match response.status() {
            status if status.is_success() => Ok(Reported::Accepted),
            StatusCode::CONFLICT => Ok(Reported::WantsFull),
            status => Err(status_error(url, status, response).await),
        }
    }

    pub fn url(&self) -> &str {
        self.desired_url.as_str()
    }
}

/// Reads a file that must be private to the agent: a token or a key.
fn read_private(path: &std::path::Path, what: &str) -> anyhow::Result<Token> {
    let text = crate::secret_file::read(path, what)?;
    Ok(Token(text.trim().to_string()))
}

fn failure(url: &str, timeout: Duration, error: reqwest::Error) -> CallError {
    if error.is_timeout() {
        return CallError::Timeout {
            url: url.to_string(),
            timeout_s: timeout.as_secs(),
        };
    }
    // The URL leads the message already; reqwest would repeat it.
    let reason = error_chain(&error.without_url());
    match tls_hint(&reason) {
        Some(hint) => CallError::Tls {
            url: url.to_string(),
            reason,
            hint,
        },
        None => CallError::Unreachable {
            url: url.to_string(),
            reason,
        },
    }
}

/// What to fix for a TLS failure, from rustls's wording; `None` when it is not one.
fn tls_hint(reason: &str) -> Option<&'static str> {
    if reason.contains("invalid peer certificate") {
        Some("the controller's certificate is not trusted (set [controller] ca_file to its CA) or does not name the host of [controller] url")
    } else if reason.contains("received fatal alert") {
        Some("the controller refused the agent's client certificate (check [controller] client_cert and client_key, and the CA the controller trusts)")
    } else {
        None
    }
}

/// The error with its causes ("connection refused" is usually two levels down).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn status_error(url: &str, status: StatusCode, response: reqwest::Response) -> CallError {
    let code = status.as_u16();
    match status {
        StatusCode::UNAUTHORIZED => CallError::Unauthorized {
            url: url.to_string(),
            status: code,
            what: "missing or wrong",
        },
        StatusCode::FORBIDDEN => CallError::Unauthorized {
            url: url.to_string(),
            status: code,
            what: "not allowed for this node",
        },
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE if retry_after(&response).is_some() => {
            CallError::Busy {
                url: url.to_string(),
                status: code,
                retry_after_s: retry_after(&response).map_or(0, |d| d.as_secs()),
            }
        }
        _ => {
            // A little of the body helps; all of it could be megabytes.
            let body = read_body(response, url, CALL_TIMEOUT)
                .await
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned())
                .unwrap_or_default();
            CallError::Status {
                url: url.to_string(),
                status: code,
                body,
            }
        }
    }
}

/// The `Retry-After` of an answer in seconds (the HTTP-date form is not used by
/// controllers and is ignored), at most [`MAX_RETRY_AFTER`].
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Reads a body of at most [`MAX_DOCUMENT_BYTES`].
async fn read_body(mut response: reqwest::Response, url: &str, timeout: Duration) -> Result<bytes::Bytes, CallError> {
    let too_large = || CallError::TooLarge {
        url: url.to_string(),
        limit: MAX_DOCUMENT_BYTES,
    };
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) if e.is_timeout() => {
                return Err(CallError::Timeout {
                    url: url.to_string(),
                    timeout_s: timeout.as_secs(),
                })
            }
            Err(e) => {
                return Err(CallError::Read {
                    url: url.to_string(),
                    reason: error_chain(&e),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_say_what_to_fix() {
        assert!(
            tls_hint("client error (Connect): invalid peer certificate: UnknownIssuer")
                .unwrap()
                .contains("ca_file")
        );
        assert!(tls_hint("received fatal alert: CertificateRequired")
            .unwrap()
            .contains("client_cert"));
        assert_eq!(tls_hint("tcp connect error: Connection refused (os error 111)"), None);
    }
}
