DELETE FROM audit_events WHERE actor_type IN ('enrollment_token', 'vehicle');
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check
    CHECK (actor_type IN ('user', 'api_key', 'system'));

DROP TABLE IF EXISTS revocations;
DROP TRIGGER IF EXISTS grants_bind_nats_user_key ON grants;
DROP TRIGGER IF EXISTS vehicles_bind_nats_user_key ON vehicles;
DROP FUNCTION IF EXISTS bind_nats_user_key();
DROP TABLE IF EXISTS nats_user_keys;
DROP TABLE IF EXISTS grants;
DROP TABLE IF EXISTS agent_nonces;
ALTER TABLE vehicles
    DROP COLUMN IF EXISTS agent_version,
    DROP COLUMN IF EXISTS arch,
    DROP COLUMN IF EXISTS hostname,
    DROP COLUMN IF EXISTS credentials_expire_at,
    DROP COLUMN IF EXISTS user_public_key;
DROP TABLE IF EXISTS enrollment_tokens;
DROP TABLE IF EXISTS nats_accounts;
DROP TABLE IF EXISTS nats_operator;
