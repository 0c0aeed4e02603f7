//! One delivery, from claim to log: render the payload for the endpoint's
//! version, sign it, send it, decide what follows, and record the attempt.
//! The apalis handler (`worker`) calls `Pipeline::deliver` for every claimed
//! delivery.

use std::time::SystemTime;

use crate::decision::{self, Decision, Outcome, RetryPolicy};
use crate::delivery::{CallRecord, Sender, SignedRequest};
use crate::instruments;
use crate::payload::{self, EventRef, Version};
use crate::queue::{ClaimedDelivery, Job};
use crate::recorder::{AttemptResult, Recorder, RecorderStopped};
use crate::signing::SigningKey;

/// What every delivery shares.
pub struct Pipeline {
    pub sender: Sender,
    pub policy: RetryPolicy,
    pub recorder: Recorder,
}

impl Pipeline {
    /// Delivers one claimed delivery and returns once its attempt is
    /// durable in the log (a crash before then repeats the call; it never
    /// loses it).
    pub async fn deliver(&self, job: Job) -> Result<(), RecorderStopped> {
        let d = &job.delivery;

        // Render and sign. An error here is ours (a malformed snapshot or
        // secret), not the receiver's: the call is not made.
        let call = match signed_request(d) {
            Ok(request) => self.sender.send(request).await,
            Err(message) => CallRecord::not_built(&d.url, message),
        };

        let position = u32::try_from(d.schedule_position).unwrap_or(0);
        let Decision { outcome, retry_in } =
            decision::decide(&call, position, &self.policy, fastrand::f64());
        log_attempt(d, &call, outcome);
        let counted = instruments::Attempt::new(
            outcome,
            call.failure.as_ref().map(|f| f.kind.as_str()),
            &d.event_type,
            &d.version,
            call.duration,
            d.event_id,
        );

        let committed = self
            .recorder
            .submit(AttemptResult {
                delivery_id: d.delivery_id,
                endpoint_id: d.endpoint_id,
                event_id: d.event_id,
                event_type: d.event_type.clone(),
                attempt: d.attempt,
                call,
                outcome,
                retry_in,
            })
            .await?;
        // The capacity slot and the endpoint's bulkhead bound calls, not log
        // writes: the claimer may use them while this result waits for its
        // batch to commit.
        let call_over = job.call_over();
        committed.wait().await?;
        drop(call_over);
        // Counted once logged, so that the metrics and the log agree.
        counted.record();
        Ok(())
    }
}

/// The body for the endpoint's version, signed with its secret as of now.
fn signed_request(d: &ClaimedDelivery) -> Result<SignedRequest, String> {
    let version = Version::parse(&d.version).map_err(|e| e.to_string())?;
    let body = payload::render(
        &EventRef {
            id: d.event_id,
            event_type: &d.event_type,
            created: d.created,
            clinic_code: d.clinic_code.as_deref(),
            snapshot: &d.snapshot,
        },
        version,
    )
    .map_err(|e| e.to_string())?;
    let key = SigningKey::from_secret(&d.secret).map_err(|e| e.to_string())?;
    Ok(SignedRequest::new(
        &d.url,
        d.event_id,
        body,
        &key,
        SystemTime::now(),
    ))
}

/// For the operator: one debug line per attempt, an info line when a
/// delivery fails for good. Never the URL, the payload or the secret.
fn log_attempt(d: &ClaimedDelivery, call: &CallRecord, outcome: Outcome) {
    tracing::debug!(
        delivery_id = d.delivery_id,
        endpoint_id = d.endpoint_id,
        attempt = d.attempt,
        status = call.response.as_ref().map(|r| r.status),
        outcome = outcome.as_str(),
        error_kind = call.failure.as_ref().map(|f| f.kind.as_str()),
        "delivery attempt finished"
    );
    if outcome == Outcome::Failed {
        tracing::info!(
            delivery_id = d.delivery_id,
            endpoint_id = d.endpoint_id,
            attempt = d.attempt,
            error = call.failure.as_ref().map(|f| f.message.as_str()),
            "delivery failed for good"
        );
    }
}
