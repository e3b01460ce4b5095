DROP INDEX tenants_grace_until_idx;
ALTER TABLE tenants
    DROP CONSTRAINT tenants_grace_check,
    DROP COLUMN grace_until,
    DROP COLUMN grace_plan;
