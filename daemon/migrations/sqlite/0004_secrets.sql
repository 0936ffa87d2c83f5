-- Secrets, sealed with AES-256-GCM; key_id names the key that sealed each one.
CREATE TABLE secrets (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    type        TEXT NOT NULL,
    field_names TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    create_time TEXT NOT NULL,
    update_time TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE INDEX secrets_key_id ON secrets (key_id);

-- Every encryption key the database has been used with, newest active; the check value
-- proves a configured key is the same key.
CREATE TABLE encryption_keys (
    key_id      TEXT PRIMARY KEY,
    nonce       BLOB NOT NULL,
    check_value BLOB NOT NULL,
    create_time TEXT NOT NULL
);

-- Who changed what, when. tenant_id is NULL for installation-wide actions.
CREATE TABLE audit_events (
    id          BLOB PRIMARY KEY,
    tenant_id   BLOB,
    time        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    result      TEXT NOT NULL,
    detail      TEXT
);

CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id DESC);
