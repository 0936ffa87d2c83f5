//! The types of credential a secret can be, with their fields. Actions name the ones they
//! accept in their [`ActionSpec`](super::ActionSpec); secrets are checked against the same
//! table when they are stored, so a new credential type is declared once, here.

/// A type of secret, with its fields.
#[derive(Debug, PartialEq, Eq)]
pub struct CredentialType {
    pub name: &'static str,
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    /// Any fields are accepted (`generic`).
    pub open: bool,
}

impl CredentialType {
    const fn new(
        name: &'static str,
        required: &'static [&'static str],
        optional: &'static [&'static str],
    ) -> CredentialType {
        CredentialType {
            name,
            required,
            optional,
            open: false,
        }
    }

    /// Whether a secret of this type may have a field so named.
    pub fn has_field(&self, field: &str) -> bool {
        self.open || self.required.contains(&field) || self.optional.contains(&field)
    }
}

/// Any fields, for expressions and actions that read them by name.
pub const GENERIC: CredentialType = CredentialType {
    open: true,
    ..CredentialType::new("generic", &[], &[])
};
/// `Authorization: Bearer <token>`.
pub const BEARER: CredentialType = CredentialType::new("bearer", &["token"], &[]);
/// HTTP basic authentication.
pub const BASIC: CredentialType = CredentialType::new("basic", &["username", "password"], &[]);
/// One header, named and valued.
pub const HEADER: CredentialType = CredentialType::new("header", &["name", "value"], &[]);
/// An OpenAI-compatible API.
pub const OPENAI: CredentialType = CredentialType::new(
    "openai",
    &["api_key"],
    &["org_id", "organization", "base_url"],
);
/// The Anthropic API.
pub const ANTHROPIC: CredentialType = CredentialType::new("anthropic", &["api_key"], &["base_url"]);
/// A PostgreSQL connection URL.
pub const POSTGRES: CredentialType = CredentialType::new("postgres", &["url"], &[]);

/// An IMAP mailbox, for email triggers: `port` defaults to 993 (993 with `tls` true,
/// the default; 143 without), `tls` is `true` or `false`.
pub const IMAP: CredentialType =
    CredentialType::new("imap", &["host", "username", "password"], &["port", "tls"]);

/// Every credential type a secret may have.
pub const ALL: &[&CredentialType] = &[
    &GENERIC, &BEARER, &BASIC, &HEADER, &OPENAI, &ANTHROPIC, &POSTGRES, &IMAP,
];

/// Looks a type up by name.
pub fn find(name: &str) -> Option<&'static CredentialType> {
    ALL.iter().copied().find(|t| t.name == name)
}
