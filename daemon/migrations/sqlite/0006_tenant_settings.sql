-- Per-tenant limits; NULL means no limit of the tenant's own (global caps still apply).
ALTER TABLE tenants ADD COLUMN max_steps_per_workflow INTEGER;
ALTER TABLE tenants ADD COLUMN max_runtime_minutes INTEGER;
-- Space-separated hosts and *.domain patterns; NULL allows any public host.
ALTER TABLE tenants ADD COLUMN allowed_domains TEXT;
