-- Per-tenant request rate limits: the setting, and (for MANTLE_RATE_LIMIT_BACKEND=postgres)
-- each tenant's GCRA state shared by every replica.
ALTER TABLE tenants ADD COLUMN rate_limit_per_minute INTEGER;

CREATE TABLE rate_limits (
    tenant_id UUID PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    -- The theoretical arrival time of the next request.
    tat       TIMESTAMPTZ NOT NULL
);
