-- Tenants and the API keys that act on them.
CREATE TABLE tenants (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    create_time  TIMESTAMPTZ NOT NULL,
    update_time  TIMESTAMPTZ NOT NULL
);

-- The tenant every single-tenant installation uses; it cannot be deleted.
INSERT INTO tenants (id, name, display_name, create_time, update_time)
VALUES ('00000000-0000-0000-0000-000000000001', 'default', 'Default tenant', now(), now());

-- tenant_id is NULL for operator keys, which belong to no tenant.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     UUID REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    scopes        TEXT NOT NULL,
    token_hash    BYTEA NOT NULL,
    create_time   TIMESTAMPTZ NOT NULL,
    expire_time   TIMESTAMPTZ,
    revoke_time   TIMESTAMPTZ,
    last_use_time TIMESTAMPTZ
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);
