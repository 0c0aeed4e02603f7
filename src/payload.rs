//! Builds the v1/v2 JSON bodies from an event's version-neutral snapshot, in
//! exactly the seed's shapes and key order (serde writes struct fields in
//! declaration order).
//!
//! Typing rules of the contract: ids are JSON strings in both versions (null
//! when absent); v1 carries times and amounts as strings and the status as its
//! code, v2 carries them as integers and the status as its name.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every event type, as `webhooks.event_types()` lists them (the schema
/// refuses any other).
pub const EVENT_TYPES: [&str; 6] = [
    "user.created",
    "visit.created",
    "visit.updated",
    "visit.ended",
    "visit.note.signed_and_sent",
    "visit.invoice.processed",
];

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("event {event_id} has an unknown type {event_type:?}")]
    UnknownType { event_id: Uuid, event_type: String },
    #[error("unknown payload version {0:?}")]
    UnknownVersion(String),
    #[error("event {event_id} ({event_type}) has a malformed snapshot: {source}")]
    Snapshot {
        event_id: Uuid,
        event_type: String,
        source: serde_json::Error,
    },
    #[error("serializing the payload: {0}")]
    Serialize(#[from] serde_json::Error),
}

pub type Result<T, E = PayloadError> = std::result::Result<T, E>;

/// The payload version an endpoint receives (`webhooks.endpoints.version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "1.0" => Ok(Self::V1),
            "2.0" => Ok(Self::V2),
            other => Err(PayloadError::UnknownVersion(other.to_owned())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1.0",
            Self::V2 => "2.0",
        }
    }
}

/// What the renderer needs of an event, as the claim query returns it.
#[derive(Debug, Clone)]
pub struct EventRef<'a> {
    pub id: Uuid,
    pub event_type: &'a str,
    /// Unix seconds when the event was recorded.
    pub created: i64,
    pub clinic_code: Option<&'a str>,
    /// The snapshot written by the trigger (`webhooks.events.snapshot`).
    pub snapshot: &'a str,
}

// ---- snapshots (written by the triggers; see sql/schema/functions/)

#[derive(Debug, Deserialize)]
struct UserSnapshot {
    id: i64,
    role: String,
    source: String,
    created_by: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct VisitSnapshot {
    id: i64,
    member_id: Option<i64>,
    provider_id: Option<i64>,
    start: Option<i64>,
    end: Option<i64>,
    actual_start: Option<i64>,
    actual_end: Option<i64>,
    status: i64,
    status_name: Option<String>,
    status_updated_by: Option<i64>,
    note: Option<NoteSnapshot>,
    invoice: Option<InvoiceSnapshot>,
}

#[derive(Debug, Deserialize)]
struct NoteSnapshot {
    id: i64,
    status: String,
}

#[derive(Debug, Deserialize)]
struct InvoiceSnapshot {
    id: i64,
    status: String,
    amount_due: i64,
    amount_paid: i64,
    currency: String,
}

// ---- wire shapes

#[derive(Serialize)]
struct EnvelopeV1<'a, D> {
    version: &'static str,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    created: i64,
    account_code: Option<&'a str>,
    data: D,
}

#[derive(Serialize)]
struct EnvelopeV2<'a, D> {
    version: &'static str,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    created: i64,
    clinic_code: Option<&'a str>,
    data: D,
}

#[derive(Serialize)]
struct UserData {
    id: String,
    role: String,
    source: String,
    created_by: Option<String>,
}

#[derive(Serialize)]
struct VisitDataV1 {
    id: String,
    member_id: Option<String>,
    provider_id: Option<String>,
    start: Option<String>,
    end: Option<String>,
    actual_start: Option<String>,
    actual_end: Option<String>,
    status: String,
    completed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<NoteData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice: Option<InvoiceDataV1>,
}

#[derive(Serialize)]
struct VisitDataV2 {
    id: String,
    member_id: Option<String>,
    provider_id: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
    actual_start: Option<i64>,
    actual_end: Option<i64>,
    status: String,
    status_updated_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<NoteData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice: Option<InvoiceDataV2>,
}

#[derive(Serialize)]
struct NoteData {
    id: String,
    status: String,
}

#[derive(Serialize)]
struct InvoiceDataV1 {
    id: String,
    status: String,
    amount_due: String,
    amount_paid: String,
    currency: String,
}

#[derive(Serialize)]
struct InvoiceDataV2 {
    id: String,
    status: String,
    amount_due: i64,
    amount_paid: i64,
    currency: String,
}

fn id(v: Option<i64>) -> Option<String> {
    v.map(|v| v.to_string())
}

impl VisitSnapshot {
    fn into_v1(self) -> VisitDataV1 {
        VisitDataV1 {
            id: self.id.to_string(),
            member_id: id(self.member_id),
            provider_id: id(self.provider_id),
            start: id(self.start),
            end: id(self.end),
            actual_start: id(self.actual_start),
            actual_end: id(self.actual_end),
            status: self.status.to_string(),
            completed_by: id(self.status_updated_by),
            note: self.note.map(NoteSnapshot::into_data),
            invoice: self.invoice.map(|i| InvoiceDataV1 {
                id: i.id.to_string(),
                status: i.status,
                amount_due: i.amount_due.to_string(),
                amount_paid: i.amount_paid.to_string(),
                currency: i.currency,
            }),
        }
    }

    fn into_v2(self) -> VisitDataV2 {
        VisitDataV2 {
            id: self.id.to_string(),
            member_id: id(self.member_id),
            provider_id: id(self.provider_id),
            start: self.start,
            end: self.end,
            actual_start: self.actual_start,
            actual_end: self.actual_end,
            // A status a DBA removed from clinic.visit_statuses still renders.
            status: self.status_name.unwrap_or_else(|| self.status.to_string()),
            status_updated_by: id(self.status_updated_by),
            note: self.note.map(NoteSnapshot::into_data),
            invoice: self.invoice.map(|i| InvoiceDataV2 {
                id: i.id.to_string(),
                status: i.status,
                amount_due: i.amount_due,
                amount_paid: i.amount_paid,
                currency: i.currency,
            }),
        }
    }
}

impl NoteSnapshot {
    fn into_data(self) -> NoteData {
        NoteData {
            id: self.id.to_string(),
            status: self.status,
        }
    }
}

impl UserSnapshot {
    fn into_data(self) -> UserData {
        UserData {
            id: self.id.to_string(),
            role: self.role,
            source: self.source,
            created_by: id(self.created_by),
        }
    }
}

enum Subject {
    User(UserSnapshot),
    Visit(Box<VisitSnapshot>),
}

fn parse_subject(event: &EventRef<'_>) -> Result<Subject> {
    let malformed = |source| PayloadError::Snapshot {
        event_id: event.id,
        event_type: event.event_type.to_owned(),
        source,
    };
    match event.event_type {
        "user.created" => serde_json::from_str(event.snapshot)
            .map(Subject::User)
            .map_err(malformed),
        "visit.created"
        | "visit.updated"
        | "visit.ended"
        | "visit.note.signed_and_sent"
        | "visit.invoice.processed" => serde_json::from_str(event.snapshot)
            .map(|v| Subject::Visit(Box::new(v)))
            .map_err(malformed),
        other => Err(PayloadError::UnknownType {
            event_id: event.id,
            event_type: other.to_owned(),
        }),
    }
}

/// The exact bytes POSTed to an endpoint of `version` for `event`.
pub fn render(event: &EventRef<'_>, version: Version) -> Result<Vec<u8>> {
    let subject = parse_subject(event)?;
    let body = match (version, subject) {
        (Version::V1, Subject::User(u)) => serde_json::to_vec(&EnvelopeV1 {
            version: version.as_str(),
            id: event.id,
            event_type: event.event_type,
            created: event.created,
            account_code: event.clinic_code,
            data: u.into_data(),
        }),
        (Version::V2, Subject::User(u)) => serde_json::to_vec(&EnvelopeV2 {
            version: version.as_str(),
            id: event.id,
            event_type: event.event_type,
            created: event.created,
            clinic_code: event.clinic_code,
            data: u.into_data(),
        }),
        (Version::V1, Subject::Visit(v)) => serde_json::to_vec(&EnvelopeV1 {
            version: version.as_str(),
            id: event.id,
            event_type: event.event_type,
            created: event.created,
            account_code: event.clinic_code,
            data: v.into_v1(),
        }),
        (Version::V2, Subject::Visit(v)) => serde_json::to_vec(&EnvelopeV2 {
            version: version.as_str(),
            id: event.id,
            event_type: event.event_type,
            created: event.created,
            clinic_code: event.clinic_code,
            data: v.into_v2(),
        }),
    }?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_ID: &str = "5c34979c-30dc-496c-8cd3-6eb9925862c1";

    fn event<'a>(event_type: &'a str, snapshot: &'a str) -> EventRef<'a> {
        EventRef {
            id: SEED_ID.parse().expect("uuid"),
            event_type,
            created: 1546950556,
            clinic_code: Some("xxx"),
            snapshot,
        }
    }

    const CANCELLED_VISIT: &str = r#"{"id":28540,"member_id":60610,"provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":1546950555,"status":40,"status_name":"cancelled","status_updated_by":60610}"#;

    #[test]
    fn seed_visit_ended_v1_and_v2() {
        let e = event("visit.ended", CANCELLED_VISIT);
        let v1 = String::from_utf8(render(&e, Version::V1).expect("v1")).expect("utf8");
        assert_eq!(
            v1,
            r#"{"version":"1.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.ended","created":1546950556,"account_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":"1546950546","end":"1546951446","actual_start":"1546950546","actual_end":"1546950555","status":"40","completed_by":"60610"}}"#
        );
        let v2 = String::from_utf8(render(&e, Version::V2).expect("v2")).expect("utf8");
        assert_eq!(
            v2,
            r#"{"version":"2.0","id":"5c34979c-30dc-496c-8cd3-6eb9925862c1","type":"visit.ended","created":1546950556,"clinic_code":"xxx","data":{"id":"28540","member_id":"60610","provider_id":null,"start":1546950546,"end":1546951446,"actual_start":1546950546,"actual_end":1546950555,"status":"cancelled","status_updated_by":"60610"}}"#
        );
    }

    #[test]
    fn malformed_snapshots_and_unknown_types_are_errors_not_panics() {
        let e = event("visit.ended", r#"{"id":"not a number"}"#);
        assert!(matches!(
            render(&e, Version::V2),
            Err(PayloadError::Snapshot { .. })
        ));
        let e = event("visit.exploded", CANCELLED_VISIT);
        assert!(matches!(
            render(&e, Version::V2),
            Err(PayloadError::UnknownType { .. })
        ));
        assert!(Version::parse("3.0").is_err());
    }
}
