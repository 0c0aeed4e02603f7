//! One HTTP call: sign, POST, read a bounded response, classify the result.
//! Never follows redirects, never reads more of a response than the log keeps,
//! and never lets a URL's credentials reach an error message.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::HttpSettings;
use crate::retry::{Verdict, classify_status, parse_retry_after};
use crate::signing::SigningKey;
use crate::target::{GuardedResolver, RefusedTarget, check_literal};

/// Sent with every request, so receivers can tell who is calling.
pub const USER_AGENT: &str = concat!("clinic-webhooks/", env!("CARGO_PKG_VERSION"));

/// Machine-readable failure kinds (`webhooks.attempts.error_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Dns,
    Connect,
    Tls,
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
}

/// Everything the log keeps about one call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub url: String,
    pub request_headers: Value,
    pub request_body: String,
    pub response: Option<ResponseRecord>,
    pub failure: Option<Failure>,
}

impl CallRecord {
    pub fn verdict(&self) -> Verdict {
        match &self.failure {
            None => Verdict::Success,
            Some(f) => match f.kind {
                ErrorKind::Status => self
                    .response
                    .as_ref()
                    .map_or(Verdict::Retryable, |r| classify_status(r.status)),
                ErrorKind::Redirect | ErrorKind::RefusedTarget | ErrorKind::Internal => {
                    Verdict::Final
                }
                ErrorKind::Timeout
                | ErrorKind::Dns
                | ErrorKind::Connect
                | ErrorKind::Tls
                | ErrorKind::Body => Verdict::Retryable,
            },
        }
    }

    /// A record for a call that could not even be built.
    pub fn internal(url: &str, message: String) -> Self {
        Self {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            url: url.to_owned(),
            request_headers: Value::Null,
            request_body: String::new(),
            response: None,
            failure: Some(Failure {
                kind: ErrorKind::Internal,
                message,
            }),
        }
    }
}

/// A signed request, ready to send.
pub struct Outgoing<'a> {
    pub url: &'a str,
    pub event_id: Uuid,
    pub body: Vec<u8>,
    pub key: &'a SigningKey,
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
}

impl Sender {
    pub fn new(http: &HttpSettings) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
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
        })
    }

    /// Sends one request and reports what happened; never fails.
    pub async fn send(&self, out: Outgoing<'_>) -> CallRecord {
        let started_at = SystemTime::now();
        let timestamp = unix_seconds(started_at);
        let msg_id = out.event_id.to_string();
        let signature = out.key.sign(&msg_id, timestamp, &out.body);
        let request_headers = Value::Object(Map::from_iter([
            ("content-type".to_owned(), Value::from("application/json")),
            ("user-agent".to_owned(), Value::from(USER_AGENT)),
            ("webhook-id".to_owned(), Value::from(msg_id.clone())),
            (
                "webhook-timestamp".to_owned(),
                Value::from(timestamp.to_string()),
            ),
            (
                "webhook-signature".to_owned(),
                Value::from(signature.clone()),
            ),
        ]));
        let request_body = String::from_utf8_lossy(&out.body).into_owned();
        let clock = Instant::now();
        let outcome = self
            .call(out.url, &msg_id, timestamp, &signature, out.body)
            .await;
        let (response, failure) = match outcome {
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
                        message: format!("HTTP {status}"),
                    }),
                };
                (Some(response), failure)
            }
            Err(failure) => (None, Some(failure)),
        };
        CallRecord {
            started_at,
            duration: clock.elapsed(),
            url: out.url.to_owned(),
            request_headers,
            request_body,
            response,
            failure,
        }
    }

    async fn call(
        &self,
        url: &str,
        msg_id: &str,
        timestamp: i64,
        signature: &str,
        body: Vec<u8>,
    ) -> Result<ResponseRecord, Failure> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Failure {
            kind: ErrorKind::Internal,
            message: format!("endpoint URL does not parse: {e}"),
        })?;
        check_literal(&parsed, self.allow_private).map_err(|e| Failure {
            kind: ErrorKind::RefusedTarget,
            message: e.to_string(),
        })?;
        let mut response = self
            .client
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
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
                Err(e) if (200..300).contains(&status) && !e.is_timeout() => {
                    // The status was already received: a broken body does not undo a 2xx.
                    truncated = true;
                    break;
                }
                Err(e) => return Err(classify_error(e)),
            }
        }
        Ok(ResponseRecord {
            status,
            headers: Value::Object(headers),
            body: String::from_utf8_lossy(&kept).into_owned(),
            truncated,
            retry_after,
        })
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Maps a reqwest error to a failure kind and a message without the URL.
fn classify_error(err: reqwest::Error) -> Failure {
    let err = err.without_url();
    let mut chain = Vec::new();
    let mut refused = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        refused |= e.downcast_ref::<RefusedTarget>().is_some();
        chain.push(e.to_string());
        source = e.source();
    }
    chain.dedup();
    let message = chain.join(": ");
    let lower = message.to_ascii_lowercase();
    let kind = if refused {
        ErrorKind::RefusedTarget
    } else if err.is_timeout() {
        ErrorKind::Timeout
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        ErrorKind::Dns
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("ssl") {
        ErrorKind::Tls
    } else if err.is_body() || err.is_decode() {
        ErrorKind::Body
    } else {
        ErrorKind::Connect
    };
    Failure { kind, message }
}
