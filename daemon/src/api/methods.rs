//! What the auth layer does with each RPC, declared once for every method of `mantle.v1`.
//!
//! The kind decides rate limiting and auditing; a test checks this table against the
//! descriptor set compiled from the protos, so an RPC added without a decision here fails
//! the build's tests instead of silently escaping both.

/// How an RPC is treated besides authentication and scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads: neither rate limited nor audited.
    Read,
    /// Reads that make the daemon work (parsing a workflow file): rate limited, not audited.
    Compute,
    /// Changes something: rate limited and audited.
    Write,
    /// Changes something, audited by its own domain code with the resource it changed (the
    /// secrets service): rate limited, and not audited again here.
    WriteAuditedByDomain,
}

impl Kind {
    pub fn rate_limited(self) -> bool {
        !matches!(self, Kind::Read)
    }

    /// Whether the auth layer writes the audit record.
    pub fn audited_here(self) -> bool {
        matches!(self, Kind::Write)
    }
}

use Kind::{Compute, Read, Write, WriteAuditedByDomain};

/// Every method of every `mantle.v1` service, by its gRPC path.
pub const METHODS: &[(&str, Kind)] = &[
    ("/mantle.v1.AuditService/ListAuditEvents", Read),
    ("/mantle.v1.DefinitionService/ValidateDefinition", Compute),
    ("/mantle.v1.DefinitionService/PlanDefinition", Compute),
    ("/mantle.v1.DefinitionService/ApplyDefinition", Write),
    ("/mantle.v1.DefinitionService/RollbackDefinition", Write),
    ("/mantle.v1.DefinitionService/GetDefinition", Read),
    ("/mantle.v1.DefinitionService/ListDefinitions", Read),
    ("/mantle.v1.DefinitionService/ListDefinitionVersions", Read),
    ("/mantle.v1.DefinitionService/DeleteDefinition", Write),
    ("/mantle.v1.DefinitionService/ListActions", Read),
    ("/mantle.v1.ExecutionService/StartExecution", Write),
    ("/mantle.v1.ExecutionService/GetExecution", Read),
    ("/mantle.v1.ExecutionService/ListExecutions", Read),
    ("/mantle.v1.ExecutionService/CancelExecution", Write),
    ("/mantle.v1.ExecutionService/CancelExecutions", Write),
    ("/mantle.v1.ExecutionService/DeleteExecution", Write),
    ("/mantle.v1.ExecutionService/DeleteExecutions", Write),
    ("/mantle.v1.ExecutionService/RetryExecution", Write),
    ("/mantle.v1.ExecutionService/ListStepAttempts", Read),
    ("/mantle.v1.ExecutionService/WatchExecution", Read),
    (
        "/mantle.v1.SecretService/CreateSecret",
        WriteAuditedByDomain,
    ),
    (
        "/mantle.v1.SecretService/UpdateSecret",
        WriteAuditedByDomain,
    ),
    ("/mantle.v1.SecretService/GetSecret", Read),
    ("/mantle.v1.SecretService/ListSecrets", Read),
    (
        "/mantle.v1.SecretService/DeleteSecret",
        WriteAuditedByDomain,
    ),
    (
        "/mantle.v1.SecretService/RotateEncryptionKey",
        WriteAuditedByDomain,
    ),
    ("/mantle.v1.SystemService/GetServerInfo", Read),
    ("/mantle.v1.TenantService/CreateTenant", Write),
    ("/mantle.v1.TenantService/GetTenant", Read),
    ("/mantle.v1.TenantService/ListTenants", Read),
    ("/mantle.v1.TenantService/UpdateTenant", Write),
    ("/mantle.v1.TenantService/DeleteTenant", Write),
    ("/mantle.v1.TenantService/CreateApiKey", Write),
    ("/mantle.v1.TenantService/ListApiKeys", Read),
    ("/mantle.v1.TenantService/RevokeApiKey", Write),
    ("/mantle.v1.TriggerService/ListTriggers", Read),
    ("/mantle.v1.TriggerService/PauseTrigger", Write),
    ("/mantle.v1.TriggerService/ResumeTrigger", Write),
    ("/mantle.v1.TriggerService/FireTrigger", Write),
    ("/mantle.v1.WebhookService/ListWebhookDeliveries", Read),
];

/// The method at `path` and its kind; `None` for a path that names no `mantle.v1` method
/// (it is answered UNIMPLEMENTED, and never recorded under its caller-chosen name).
pub fn lookup(path: &str) -> Option<(&'static str, Kind)> {
    METHODS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(p, k)| (p.trim_start_matches('/'), *k))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every method in the compiled protos, as `/package.Service/Method`.
    fn methods_in_protos() -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(mantle_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut out = BTreeSet::new();
        for file in set.file {
            let package = file.package().to_owned();
            for service in &file.service {
                for method in &service.method {
                    out.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
        out
    }

    #[test]
    fn every_rpc_is_declared_and_every_declaration_is_an_rpc() {
        let protos = methods_in_protos();
        let declared: BTreeSet<String> = METHODS.iter().map(|(p, _)| (*p).to_owned()).collect();
        assert_eq!(declared.len(), METHODS.len(), "a method is declared twice");
        let undeclared: Vec<_> = protos.difference(&declared).collect();
        assert!(
            undeclared.is_empty(),
            "RPCs with no kind in api/methods.rs (decide whether they are rate limited and \
             audited): {undeclared:?}"
        );
        let stale: Vec<_> = declared.difference(&protos).collect();
        assert!(
            stale.is_empty(),
            "declared but not in the protos: {stale:?}"
        );
    }

    #[test]
    fn every_service_reports_its_health() {
        let set = prost_types::FileDescriptorSet::decode(mantle_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let services: BTreeSet<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        let reported: BTreeSet<String> = crate::api::SERVICE_NAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(reported, services, "api::SERVICE_NAMES against the protos");
    }

    #[test]
    fn trigger_methods_are_declared_by_what_they_do() {
        assert_eq!(
            lookup("/mantle.v1.TriggerService/ListTriggers"),
            Some(("mantle.v1.TriggerService/ListTriggers", Kind::Read))
        );
        for method in ["PauseTrigger", "ResumeTrigger", "FireTrigger"] {
            let path = format!("/mantle.v1.TriggerService/{method}");
            let (_, kind) = lookup(&path).expect("declared");
            assert!(kind.rate_limited() && kind.audited_here(), "{method}");
        }
    }

    #[test]
    fn lookup_knows_only_declared_paths() {
        assert_eq!(
            lookup("/mantle.v1.TenantService/CreateTenant"),
            Some(("mantle.v1.TenantService/CreateTenant", Kind::Write))
        );
        assert_eq!(lookup("/mantle.v1.TenantService/CreateTenantX"), None);
        assert_eq!(lookup("/mantle.v1.X/Create".repeat(100).as_str()), None);
        assert!(Kind::Compute.rate_limited() && !Kind::Compute.audited_here());
        assert!(!Kind::Read.rate_limited());
        assert!(WriteAuditedByDomain.rate_limited() && !WriteAuditedByDomain.audited_here());
    }
}
