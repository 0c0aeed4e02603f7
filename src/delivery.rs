//! One HTTP call: the signed request (its headers built once, for sending
//! and for the log alike), the POST, a bounded read of the response, and the
//! failure kind. Never follows redirects, never reads more of a response than
//! the log keeps, and never lets a URL's credentials reach an error message.
//! What happens after the call is `decision`'s business.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::HttpSettings;
use crate::signing::SigningKey;
use crate::target::{DnsFailure, GuardedResolver, RefusedTarget, check_literal};

/// Sent with every request, so receivers can tell who is calling.
pub const USER_AGENT: &str = concat!("clinic-webhooks/", env!("CARGO_PKG_VERSION"));

/// Machine-readable failure kinds (`webhooks.attempts.error_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Dns,
    Connect,
    Tls,
    /// Connected, but the answer was not a valid HTTP response.
    Protocol,
    /// A non-2xx response status.
    Status,
    /// A 3xx: redirects are never followed.
    Redirect,
    /// The response body could not be read.
    Body,
    RefusedTarget,
    /// We could not build the request (malformed snapshot or secret).
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::Status => "status",
            Self::Redirect => "redirect",
            Self::Body => "body",
            Self::RefusedTarget => "refused_target",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ResponseRecord {
    pub status: u16,
    pub headers: Value,
    pub body: String,
    pub truncated: bool,
    pub retry_after: Option<Duration>,
    /// Why the body ended early, when it did (a reset, the timeout).
    pub cut_off: Option<String>,
}

/// Everything the log keeps about one call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub url: String,
    /// The request as it was sent (or about to be, when the target was
    /// refused); `None` when it could not be built.
    pub request: Option<SentRequest>,
    pub response: Option<ResponseRecord>,
    pub failure: Option<Failure>,
}

impl CallRecord {
    /// A record for a call whose request could not even be built (a
    /// malformed snapshot or secret: ours to fix, not the receiver's).
    pub fn not_built(url: &str, message: String) -> Self {
        Self {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            url: url.to_owned(),
            request: None,
            response: None,
            failure: Some(Failure {
                kind: ErrorKind::Internal,
                message,
            }),
        }
    }
}

/// The headers and body of a request, as the log keeps them.
#[derive(Debug, Clone)]
pub struct SentRequest {
    /// A JSON object of header name to value.
    pub headers: Value,
    pub body: String,
}

/// A signed webhook request, ready to send: its headers are built here
/// once, and the same list is sent and logged.
pub struct SignedRequest {
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
    started_at: SystemTime,
}

impl SignedRequest {
    /// Signs `body` as of `now` (the `webhook-timestamp`).
    pub fn new(
        url: &str,
        event_id: Uuid,
        body: Vec<u8>,
        key: &SigningKey,
        now: SystemTime,
    ) -> Self {
        let timestamp = unix_seconds(now);
        let msg_id = event_id.to_string();
        let signature = key.sign(&msg_id, timestamp, &body);
        let headers = [
            ("content-type", "application/json".to_owned()),
            // reqwest would add this one itself; named here so the log has it.
            ("accept", "*/*".to_owned()),
            ("user-agent", USER_AGENT.to_owned()),
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            // Every value is ASCII: a UUID, digits, base64, or a constant.
            Some((
                HeaderName::from_static(name),
                HeaderValue::try_from(value).ok()?,
            ))
        })
        .collect();
        Self {
            url: url.to_owned(),
            headers,
            body,
            started_at: now,
        }
    }

    /// The headers and body as the log keeps them.
    fn sent(&self) -> SentRequest {
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), Value::String(value))
            })
            .collect::<Map<_, _>>();
        SentRequest {
            headers: Value::Object(headers),
            body: String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// The shared HTTP client (one connection pool, kept alive per host).
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    max_body: usize,
    allow_private: bool,
    allowed_targets: std::sync::Arc<[std::net::SocketAddr]>,
}

impl Sender {
    pub fn new(http: &HttpSettings) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(http.connect_timeout)
            .timeout(http.timeout)
            // Every connection that was busy may stay idle (the worker's
            // concurrency bounds how many there are): a cap below an
            // endpoint's bulkhead would close and reopen connections between
            // bursts, at a connect, a fresh read buffer and a TIME_WAIT each.
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .dns_resolver(GuardedResolver {
                allow_private: http.allow_private_targets,
            })
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            max_body: http.max_response_body,
            allow_private: http.allow_private_targets,
            allowed_targets: http.allowed_targets.clone().into(),
        })
    }

    /// Sends one request and reports what happened; never fails.
    pub async fn send(&self, request: SignedRequest) -> CallRecord {
        let sent = request.sent();
        let started_at = request.started_at;
        let url = request.url.clone();
        let clock = Instant::now();
        let (response, failure) = match self.call(request).await {
            Ok(response) => {
                let failure = match response.status {
                    200..=299 => None,
                    300..=399 => Some(Failure {
                        kind: ErrorKind::Redirect,
                        message: format!(
                            "HTTP {}: redirects are not followed; configure the final URL",
                            response.status
                        ),
                    }),
                    status => Some(Failure {
                        kind: ErrorKind::Status,
                        message: match &response.cut_off {
                            None => format!("HTTP {status}"),
                            Some(why) => {
                                format!("HTTP {status}; the response body was cut off: {why}")
                            }
                        },
                    }),
                };
                (Some(response), failure)
            }
            Err(failure) => (None, Some(failure)),
        };
        CallRecord {
            started_at,
            duration: clock.elapsed(),
            url,
            request: Some(sent),
            response,
            failure,
        }
    }

    async fn call(&self, request: SignedRequest) -> Result<ResponseRecord, Failure> {
        let parsed = reqwest::Url::parse(&request.url).map_err(|e| Failure {
            kind: ErrorKind::Internal,
            message: format!("endpoint URL does not parse: {e}"),
        })?;
        check_literal(&parsed, self.allow_private, &self.allowed_targets).map_err(|e| Failure {
            kind: ErrorKind::RefusedTarget,
            message: e.to_string(),
        })?;
        let mut response = self
            .client
            .post(parsed)
            .headers(request.headers.into_iter().collect::<HeaderMap>())
            .body(request.body)
            .send()
            .await
            .map_err(classify_error)?;
        let status = response.status().as_u16();
        let mut headers = Map::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), Value::String(value));
                }
            }
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut kept = Vec::new();
        let mut truncated = false;
        let mut cut_off = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_body.saturating_sub(kept.len());
                    if chunk.len() > room {
                        kept.extend_from_slice(&chunk[..room]);
                        // The rest is not read: a hostile receiver cannot make us buffer it.
                        truncated = true;
                        break;
                    }
                    kept.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                // The status and headers have arrived: the receiver has
                // answered, and its status decides. A body cut off by a
                // reset or the timeout is kept as far as it came.
                Err(e) => {
                    truncated = true;
                    cut_off = Some(classify_error(e).message);
                    break;
                }
            }
        }
        Ok(ResponseRecord {
            status,
            headers: Value::Object(headers),
            body: String::from_utf8_lossy(&kept).into_owned(),
            truncated,
            retry_after,
            cut_off,
        })
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Maps a reqwest error to a failure kind, by the types in its chain of
/// causes, and a message without the URL.
fn classify_error(err: reqwest::Error) -> Failure {
    let err = err.without_url();
    let mut messages = Vec::new();
    let mut refused = false;
    let mut dns = false;
    let mut tls = false;
    let mut http = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        refused |= e.is::<RefusedTarget>();
        dns |= e.is::<DnsFailure>();
        tls |= e.is::<native_tls::Error>();
        http |= e.is::<hyper::Error>();
        messages.push(e.to_string());
        source = e.source();
    }
    messages.dedup();
    let kind = if refused {
        ErrorKind::RefusedTarget
    } else if err.is_timeout() {
        ErrorKind::Timeout
    } else if dns {
        ErrorKind::Dns
    } else if tls {
        ErrorKind::Tls
    } else if err.is_connect() {
        ErrorKind::Connect
    } else if err.is_body() || err.is_decode() {
        ErrorKind::Body
    } else if http {
        // Connected, but what came back was no HTTP response: malformed or
        // oversized, or the connection closed or reset before a complete
        // response head. A broken receiver, not a down one.
        ErrorKind::Protocol
    } else {
        ErrorKind::Connect
    };
    Failure {
        kind,
        message: messages.join(": "),
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_logged_headers_are_the_sent_headers() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let id = Uuid::nil();
        let now = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let request = SignedRequest::new("https://example.com/h", id, b"{}".to_vec(), &key, now);
        let logged = request.sent().headers;
        let sent: Map<String, Value> = request
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), Value::from(v.to_str().expect("ascii"))))
            .collect();
        assert_eq!(logged, Value::Object(sent));
        assert_eq!(logged["webhook-id"], id.to_string());
        assert_eq!(logged["webhook-timestamp"], "1614265330");
        assert_eq!(
            logged["webhook-signature"],
            key.sign(&id.to_string(), 1_614_265_330, b"{}")
        );
        assert_eq!(logged["user-agent"], USER_AGENT);
        assert_eq!(request.headers.len(), 6, "no header lost in the building");
    }
}
