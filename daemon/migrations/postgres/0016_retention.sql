-- Retention: how long a tenant's finished executions are kept; NULL: the installation's
-- default.
ALTER TABLE tenants ADD COLUMN retention_seconds BIGINT;

-- Work that one daemon of an installation does at a time (the retention janitor): who holds
-- it until when.
CREATE TABLE singleton_leases (
    name    TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);

-- The indexes of lists at scale and of retention follow, one migration each: they are built
-- CONCURRENTLY, so that an upgrade of a large installation does not block writes to the
-- tables while they build, and PostgreSQL builds such an index only outside a transaction,
-- alone in its statement. (If a build is interrupted, PostgreSQL leaves the index INVALID
-- and the next attempt fails on its name: drop it and start again; see docs/kubernetes.md.)
