-- Tenants and the API keys that act on them. Ids are UUIDs stored as 16-byte blobs,
-- times as RFC 3339 text.
CREATE TABLE tenants (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    create_time  TEXT NOT NULL,
    update_time  TEXT NOT NULL
);

-- The tenant every single-tenant installation uses; it cannot be deleted.
INSERT INTO tenants (id, name, display_name, create_time, update_time)
VALUES (X'00000000000000000000000000000001', 'default', 'Default tenant',
        strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

-- tenant_id is NULL for operator keys, which belong to no tenant.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     BLOB REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    scopes        TEXT NOT NULL,
    token_hash    BLOB NOT NULL,
    create_time   TEXT NOT NULL,
    expire_time   TEXT,
    revoke_time   TEXT,
    last_use_time TEXT
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);
