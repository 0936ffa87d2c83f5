//! Scopes: what a token may do.

use std::fmt;
use std::str::FromStr;

/// One permission a token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    DefinitionsRead,
    DefinitionsWrite,
    ExecutionsRead,
    ExecutionsWrite,
    SecretsRead,
    SecretsWrite,
    /// Every tenant scope above (written `*`).
    AllTenantScopes,
    /// Manage tenants and API keys; held by operator keys only.
    TenantsAdmin,
}

impl Scope {
    /// Every scope, in the order the docs list them.
    pub const ALL: [Scope; 8] = [
        Scope::DefinitionsRead,
        Scope::DefinitionsWrite,
        Scope::ExecutionsRead,
        Scope::ExecutionsWrite,
        Scope::SecretsRead,
        Scope::SecretsWrite,
        Scope::AllTenantScopes,
        Scope::TenantsAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::DefinitionsRead => "definitions:read",
            Scope::DefinitionsWrite => "definitions:write",
            Scope::ExecutionsRead => "executions:read",
            Scope::ExecutionsWrite => "executions:write",
            Scope::SecretsRead => "secrets:read",
            Scope::SecretsWrite => "secrets:write",
            Scope::AllTenantScopes => "*",
            Scope::TenantsAdmin => "tenants:admin",
        }
    }

    /// Whether the scope acts inside a tenant (as opposed to operating the installation).
    pub fn is_tenant_scope(self) -> bool {
        self != Scope::TenantsAdmin
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown scope name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scope {0:?}; known scopes: definitions:read, definitions:write, executions:read, executions:write, secrets:read, secrets:write, *, tenants:admin"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// A set of scopes, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut v: Vec<Scope> = scopes.into_iter().collect();
        v.sort();
        v.dedup();
        ScopeSet(v)
    }

    /// Whether the set grants `required`; `*` grants every tenant scope.
    pub fn grants(&self, required: Scope) -> bool {
        self.0.contains(&required)
            || (required.is_tenant_scope() && self.0.contains(&Scope::AllTenantScopes))
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The storage form: scope names separated by single spaces.
    pub fn to_storage(&self) -> String {
        self.0
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Parses the storage form written by [`ScopeSet::to_storage`].
    pub fn from_storage(s: &str) -> Result<Self, UnknownScope> {
        s.split_whitespace()
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(ScopeSet::new)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_grants_tenant_scopes_but_not_admin() {
        let set = ScopeSet::new([Scope::AllTenantScopes]);
        assert!(set.grants(Scope::ExecutionsWrite));
        assert!(set.grants(Scope::SecretsRead));
        assert!(!set.grants(Scope::TenantsAdmin));
    }

    #[test]
    fn a_single_scope_grants_only_itself() {
        let set = ScopeSet::new([Scope::ExecutionsRead]);
        assert!(set.grants(Scope::ExecutionsRead));
        assert!(!set.grants(Scope::ExecutionsWrite));
        assert!(!set.grants(Scope::TenantsAdmin));
    }

    #[test]
    fn storage_round_trip_sorts_and_dedups() {
        let set = ScopeSet::new([
            Scope::SecretsWrite,
            Scope::DefinitionsRead,
            Scope::SecretsWrite,
        ]);
        assert_eq!(set.to_storage(), "definitions:read secrets:write");
        assert_eq!(ScopeSet::from_storage(&set.to_storage()).unwrap(), set);
    }

    #[test]
    fn unknown_scope_is_named() {
        let err = "executions:delete".parse::<Scope>().unwrap_err();
        assert!(err.to_string().contains("\"executions:delete\""));
    }
}
