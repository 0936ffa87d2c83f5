-- Per-tenant settings of ai/completion; NULL means no cap of the tenant's own. The default
-- credentials are a JSON object of provider to secret name (NULL when there are none).
ALTER TABLE tenants ADD COLUMN max_cost_usd_per_execution REAL;
ALTER TABLE tenants ADD COLUMN max_tokens_per_day INTEGER;
ALTER TABLE tenants ADD COLUMN default_credentials TEXT;
