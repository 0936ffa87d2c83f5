//! Filters of the audit log and webhook delivery listings.

use chrono::{DateTime, Utc};

/// Which audit events [`Client::list_audit_events`](crate::Client::list_audit_events)
/// returns: those matching every filter given. The default matches every event the token
/// may see (a tenant key: its tenant's; an operator key: every tenant's and the
/// installation's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this tenant's events. A tenant key may name only its own tenant (another
    /// answers NOT_FOUND).
    pub tenant: Option<String>,
    /// Only this actor's events (exact match): an API key id, `env:MANTLE_API_TOKEN`, …
    pub actor: Option<String>,
    /// Only events of this action: exact (`secret.create`), or a prefix when it ends with
    /// `*` (`mantle.v1.SecretService/*`).
    pub action: Option<String>,
    /// Only events with this result: `OK`, a gRPC status code name (`PERMISSION_DENIED`),
    /// or `refused` for anything but OK; case does not matter. The server refuses other
    /// values (INVALID_ARGUMENT naming `result`).
    pub result: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// A delivery's state: the daemon's own type.
pub use mantle_model::delivery::DeliveryStatus;

/// Which deliveries
/// [`Client::list_webhook_deliveries`](crate::Client::list_webhook_deliveries) returns:
/// those matching every filter given. The default matches every delivery the token may
/// see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this tenant's deliveries. A tenant key may name only its own tenant (another
    /// answers NOT_FOUND).
    pub tenant: Option<String>,
    /// Only deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Only the deliveries of this execution (its id; the server refuses one that is not a
    /// UUID with INVALID_ARGUMENT naming `execution_id`).
    pub execution_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_status_names_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            DeliveryStatus::parse(" Delivered"),
            Some(DeliveryStatus::Delivered)
        );
        assert_eq!(DeliveryStatus::parse("sent"), None);
        assert_eq!(DeliveryStatus::Failed.to_string(), "failed");
    }
}
