-- Per-tenant request rate limits (the setting; SQLite keeps limiter state in memory).
ALTER TABLE tenants ADD COLUMN rate_limit_per_minute INTEGER;
