-- NATS identity (DESIGN.md §2): the operator, one account per tenant,
-- enrollment tokens, vehicle credentials, agent renewal nonces, grants and
-- revocations.
--
-- Seeds are never stored in the clear: "sealed" columns hold the Issuer's
-- sealed blobs, which the database cannot open. Public keys are nkeys
-- (base32, 56 characters; the first letter says the kind: O operator,
-- A account, U user) and are CHECKed as such. Token and grant IDs have the
-- format of API key IDs (internal/secret) and are COLLATE "C" for bytewise
-- ordering, as in 000001.

-- The installation's NATS operator: exactly one row (id is always true).
CREATE TABLE nats_operator (
    id                        boolean PRIMARY KEY DEFAULT true
                              CONSTRAINT nats_operator_id_check CHECK (id),
    name                      text NOT NULL CONSTRAINT nats_operator_name_check CHECK (name <> ''),
    public_key                text NOT NULL
                              CONSTRAINT nats_operator_public_key_check CHECK (public_key ~ '^O[A-Z2-7]{55}$'),
    signing_keys              text[] NOT NULL DEFAULT '{}',
    jwt                       text NOT NULL CONSTRAINT nats_operator_jwt_check CHECK (jwt <> ''),
    system_account_public_key text NOT NULL
                              CONSTRAINT nats_operator_system_account_public_key_check CHECK (system_account_public_key ~ '^A[A-Z2-7]{55}$'),
    system_account_jwt        text NOT NULL CONSTRAINT nats_operator_system_account_jwt_check CHECK (system_account_jwt <> ''),
    sealed                    bytea NOT NULL CONSTRAINT nats_operator_sealed_check CHECK (length(sealed) > 0),
    created_at                timestamptz NOT NULL DEFAULT now()
);

-- A tenant's NATS account. Every change increments version and re-signs
-- jwt in the same transaction; pushed_version is the highest version every
-- hub node acknowledged.
CREATE TABLE nats_accounts (
    tenant_id           uuid PRIMARY KEY REFERENCES tenants (id),
    name                text NOT NULL CONSTRAINT nats_accounts_name_check CHECK (name <> ''),
    public_key          text NOT NULL
                        CONSTRAINT nats_accounts_public_key_key UNIQUE
                        CONSTRAINT nats_accounts_public_key_check CHECK (public_key ~ '^A[A-Z2-7]{55}$'),
    -- The public keys of the role signing keys (natsauth.RoleKeys).
    vehicle_signing_key text NOT NULL
                        CONSTRAINT nats_accounts_vehicle_signing_key_check CHECK (vehicle_signing_key ~ '^A[A-Z2-7]{55}$'),
    grant_signing_key   text NOT NULL
                        CONSTRAINT nats_accounts_grant_signing_key_check CHECK (grant_signing_key ~ '^A[A-Z2-7]{55}$'),
    service_signing_key text NOT NULL
                        CONSTRAINT nats_accounts_service_signing_key_check CHECK (service_signing_key ~ '^A[A-Z2-7]{55}$'),
    sealed              bytea NOT NULL CONSTRAINT nats_accounts_sealed_check CHECK (length(sealed) > 0),
    -- natsauth.Limits with snake_case keys (conn, leaf_node_conn, ...).
    limits              jsonb NOT NULL CONSTRAINT nats_accounts_limits_check CHECK (jsonb_typeof(limits) = 'object'),
    -- User public key → unix time at or before which its JWTs are refused.
    revocations         jsonb NOT NULL DEFAULT '{}'
                        CONSTRAINT nats_accounts_revocations_check CHECK (jsonb_typeof(revocations) = 'object'),
    version             bigint NOT NULL CONSTRAINT nats_accounts_version_check CHECK (version >= 1),
    jwt                 text NOT NULL CONSTRAINT nats_accounts_jwt_check CHECK (jwt <> ''),
    -- No node can have acknowledged a version that was never signed.
    pushed_version      bigint NOT NULL DEFAULT 0
                        CONSTRAINT nats_accounts_pushed_version_check CHECK (pushed_version >= 0 AND pushed_version <= version),
    pushed_at           timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- FindAccountsBehind: only accounts whose hubs lag are in the index, so the
-- sweep costs nothing when every push went through.
CREATE INDEX nats_accounts_behind_idx ON nats_accounts (updated_at, tenant_id) WHERE pushed_version < version;

CREATE TABLE enrollment_tokens (
    id           text COLLATE "C" PRIMARY KEY
                 CONSTRAINT enrollment_tokens_id_check CHECK (id ~ '^[a-z2-7]{16}$'),
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    fleet_id     bigint NOT NULL,
    description  text NOT NULL DEFAULT '',
    secret_hash  bytea NOT NULL CONSTRAINT enrollment_tokens_secret_hash_check CHECK (length(secret_hash) = 32), -- SHA-256
    expires_at   timestamptz NOT NULL,
    max_uses     int NOT NULL DEFAULT 1
                 CONSTRAINT enrollment_tokens_max_uses_check CHECK (max_uses BETWEEN 1 AND 100000),
    uses         int NOT NULL DEFAULT 0
                 CONSTRAINT enrollment_tokens_uses_check CHECK (uses >= 0 AND uses <= max_uses),
    source_cidrs cidr[] NOT NULL DEFAULT '{}', -- empty: any source
    -- The vehicle ID the token enrolls; NULL: the vehicle picks one.
    vehicle_id   text COLLATE "C" NULL
                 CONSTRAINT enrollment_tokens_vehicle_id_check CHECK (vehicle_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NULL,
    revoked_at   timestamptz NULL,
    -- A token only ever points at a fleet of its own tenant, and goes with
    -- it: a deleted fleet's tokens are useless.
    CONSTRAINT enrollment_tokens_fleet_fkey FOREIGN KEY (tenant_id, fleet_id)
        REFERENCES fleets (tenant_id, id) ON DELETE CASCADE
);

-- A fleet's tokens newest first (read backwards), keyset-paginated on
-- (created_at, id); also serves the cascade from fleets.
CREATE INDEX enrollment_tokens_tenant_id_fleet_id_created_at_id_idx
    ON enrollment_tokens (tenant_id, fleet_id, created_at, id);

-- A vehicle's credentials: the user key it enrolled with (its seed never
-- leaves the vehicle), when its JWT expires and what the agent reported.
ALTER TABLE vehicles
    ADD COLUMN user_public_key       text NULL
        CONSTRAINT vehicles_user_public_key_key UNIQUE
        CONSTRAINT vehicles_user_public_key_check CHECK (user_public_key ~ '^U[A-Z2-7]{55}$'),
    ADD COLUMN credentials_expire_at timestamptz NULL,
    ADD COLUMN hostname              text NOT NULL DEFAULT '',
    ADD COLUMN arch                  text NOT NULL DEFAULT '',
    ADD COLUMN agent_version         text NOT NULL DEFAULT '';

-- Single-use challenges for /v1/agent/renew.
CREATE TABLE agent_nonces (
    nonce           text PRIMARY KEY CONSTRAINT agent_nonces_nonce_check CHECK (nonce <> ''),
    user_public_key text NOT NULL
                    CONSTRAINT agent_nonces_user_public_key_check CHECK (user_public_key ~ '^U[A-Z2-7]{55}$'),
    expires_at      timestamptz NOT NULL
);

-- Pruning of expired nonces.
CREATE INDEX agent_nonces_expires_at_idx ON agent_nonces (expires_at);

-- Scoped, time-bounded access for a third party: a user JWT with explicit
-- subjects in the tenant's account.
CREATE TABLE grants (
    id               text COLLATE "C" PRIMARY KEY
                     CONSTRAINT grants_id_check CHECK (id ~ '^[a-z2-7]{16}$'),
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    description      text NOT NULL DEFAULT '',
    user_public_key  text NOT NULL
                     CONSTRAINT grants_user_public_key_key UNIQUE
                     CONSTRAINT grants_user_public_key_check CHECK (user_public_key ~ '^U[A-Z2-7]{55}$'),
    scopes           jsonb NOT NULL DEFAULT '[]' CONSTRAINT grants_scopes_check CHECK (jsonb_typeof(scopes) = 'array'),
    publish          text[] NOT NULL DEFAULT '{}',
    subscribe        text[] NOT NULL DEFAULT '{}',
    expires_at       timestamptz NOT NULL,
    source_cidrs     cidr[] NOT NULL DEFAULT '{}', -- empty: any source
    time_windows     jsonb NOT NULL DEFAULT '[]'
                     CONSTRAINT grants_time_windows_check CHECK (jsonb_typeof(time_windows) = 'array'),
    locale           text NOT NULL DEFAULT '',
    connection_types text[] NOT NULL DEFAULT '{}',
    region           text NOT NULL
                     CONSTRAINT grants_region_check CHECK (region ~ '^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$'),
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz NULL
);

-- The tenant's grants newest first (read backwards), keyset-paginated on
-- (created_at, id).
CREATE INDEX grants_tenant_id_created_at_id_idx ON grants (tenant_id, created_at, id);

-- nats_user_keys registers every user key bound to a vehicle or a grant,
-- with its holder, so that one key is never both a vehicle's and a grant's
-- (nor two holders' at all). The UNIQUE constraints on vehicles and grants
-- cannot see across the two tables, and a trigger that merely looked into
-- the other table would miss a concurrent, uncommitted insert; the primary
-- key here does not: the second of two racing transactions waits on the
-- first and then conflicts. Triggers keep the table up to date, so every
-- writer is held to it, not only the store.
--
-- Rows are never deleted: a key once bound stays its holder's, even after
-- a revocation, a re-enrollment with another key or the holder's deletion,
-- so that a revoked key can never come back under another identity. The
-- same holder may bind its key again (a vehicle renewing or re-enrolling).
CREATE TABLE nats_user_keys (
    public_key text PRIMARY KEY
               CONSTRAINT nats_user_keys_public_key_check CHECK (public_key ~ '^U[A-Z2-7]{55}$'),
    tenant_id  uuid NOT NULL,
    kind       text NOT NULL CONSTRAINT nats_user_keys_kind_check CHECK (kind IN ('vehicle', 'grant')),
    vehicle_id bigint NULL, -- vehicles.id (not vehicle_id); no foreign key: the row outlives the vehicle
    grant_id   text COLLATE "C" NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT nats_user_keys_holder_check CHECK (
        (kind = 'vehicle' AND vehicle_id IS NOT NULL AND grant_id IS NULL) OR
        (kind = 'grant' AND grant_id IS NOT NULL AND vehicle_id IS NULL))
);

-- bind_nats_user_key registers NEW.user_public_key for the vehicle or grant
-- being written, or raises a unique violation on nats_user_keys_pkey (the
-- store answers ECONFLICT) when another holder has it.
CREATE FUNCTION bind_nats_user_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k   text := TG_ARGV[0]; -- 'vehicle' or 'grant'
    vid bigint;
    gid text;
BEGIN
    IF NEW.user_public_key IS NULL THEN
        RETURN NULL;
    END IF;
    IF k = 'vehicle' THEN
        vid := NEW.id;
    ELSE
        gid := NEW.id;
    END IF;
    INSERT INTO nats_user_keys (public_key, tenant_id, kind, vehicle_id, grant_id)
    VALUES (NEW.user_public_key, NEW.tenant_id, k, vid, gid)
    ON CONFLICT (public_key) DO NOTHING;
    IF NOT FOUND AND NOT EXISTS (
        SELECT 1 FROM nats_user_keys
        WHERE public_key = NEW.user_public_key AND kind = k
          AND vehicle_id IS NOT DISTINCT FROM vid AND grant_id IS NOT DISTINCT FROM gid
    ) THEN
        RAISE EXCEPTION 'NATS user key % is bound to another vehicle or grant', NEW.user_public_key
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'nats_user_keys_pkey', TABLE = 'nats_user_keys';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER vehicles_bind_nats_user_key
    AFTER INSERT OR UPDATE OF user_public_key ON vehicles
    FOR EACH ROW WHEN (NEW.user_public_key IS NOT NULL)
    EXECUTE FUNCTION bind_nats_user_key('vehicle');

CREATE TRIGGER grants_bind_nats_user_key
    AFTER INSERT OR UPDATE OF user_public_key ON grants
    FOR EACH ROW
    EXECUTE FUNCTION bind_nats_user_key('grant');

-- A user key added to an account's revocations and the proof that it took
-- effect on every hub node.
CREATE TABLE revocations (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    kind                  text NOT NULL CONSTRAINT revocations_kind_check CHECK (kind IN ('vehicle', 'grant')),
    target_id             text NOT NULL CONSTRAINT revocations_target_id_check CHECK (target_id <> ''), -- vehicle ID or grant ID
    user_public_key       text NOT NULL
                          CONSTRAINT revocations_user_public_key_check CHECK (user_public_key ~ '^U[A-Z2-7]{55}$'),
    account_version       bigint NOT NULL CONSTRAINT revocations_account_version_check CHECK (account_version >= 1),
    status                text NOT NULL DEFAULT 'pending'
                          CONSTRAINT revocations_status_check CHECK (status IN ('pending', 'proven')),
    requested_at          timestamptz NOT NULL DEFAULT now(),
    completed_at          timestamptz NULL,
    nodes                 jsonb NOT NULL DEFAULT '[]' CONSTRAINT revocations_nodes_check CHECK (jsonb_typeof(nodes) = 'array'),
    connections           jsonb NOT NULL DEFAULT '[]'
                          CONSTRAINT revocations_connections_check CHECK (jsonb_typeof(connections) = 'array'),
    connections_remaining int NOT NULL DEFAULT 0
                          CONSTRAINT revocations_connections_remaining_check CHECK (connections_remaining >= 0),
    latency_us            bigint NULL CONSTRAINT revocations_latency_us_check CHECK (latency_us >= 0), -- requested → proven
    attempts              int NOT NULL DEFAULT 0 CONSTRAINT revocations_attempts_check CHECK (attempts >= 0),
    last_error            text NOT NULL DEFAULT '',
    -- A proven revocation has completed.
    CONSTRAINT revocations_completed_check CHECK (status <> 'proven' OR completed_at IS NOT NULL)
);

-- FindLatestRevocation of a vehicle or grant.
CREATE INDEX revocations_tenant_id_kind_target_id_id_idx ON revocations (tenant_id, kind, target_id, id DESC);

-- Enrollment tokens and vehicles (renewal) act too.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check
    CHECK (actor_type IN ('user', 'api_key', 'system', 'enrollment_token', 'vehicle'));
