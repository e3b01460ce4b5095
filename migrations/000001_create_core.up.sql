-- Core control-plane schema: tenants, users, memberships, API keys, fleets,
-- vehicles, audit events and idempotency keys.
--
-- Identifier columns (API key IDs, fleet slugs, vehicle IDs) are COLLATE "C"
-- so that ORDER BY and keyset pagination are bytewise and match Go's string
-- order on any server locale, and so that range scans for prefixes can use
-- the B-tree indexes. The CHECKs on identifiers mirror controlplane/ident.go:
-- the API validates first, the database guarantees.

CREATE TABLE tenants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL CONSTRAINT tenants_name_check CHECK (name <> ''),
    plan       text NOT NULL CONSTRAINT tenants_plan_check CHECK (plan IN ('free', 'scale')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL
                  CONSTRAINT users_email_key UNIQUE
                  CONSTRAINT users_email_check CHECK (email <> '' AND email = lower(email)),
    password_hash text NULL, -- argon2id PHC string; NULL = no password set yet
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CONSTRAINT memberships_role_check CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

-- Lists a user's tenants and serves the ON DELETE CASCADE from users.
CREATE INDEX memberships_user_id_idx ON memberships (user_id);

CREATE TABLE api_keys (
    id           text COLLATE "C" PRIMARY KEY
                 CONSTRAINT api_keys_id_check CHECK (id ~ '^[a-z2-7]{16}$'),
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    name         text NOT NULL CONSTRAINT api_keys_name_check CHECK (name <> ''),
    role         text NOT NULL CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'member', 'viewer')),
    secret_hash  bytea NOT NULL CONSTRAINT api_keys_secret_hash_check CHECK (length(secret_hash) = 32), -- SHA-256
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NULL,
    last_used_at timestamptz NULL,
    revoked_at   timestamptz NULL
);

CREATE INDEX api_keys_tenant_id_id_idx ON api_keys (tenant_id, id);

CREATE TABLE fleets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    slug        text COLLATE "C" NOT NULL
                CONSTRAINT fleets_slug_check CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    name        text NOT NULL CONSTRAINT fleets_name_check CHECK (name <> ''),
    description text NOT NULL DEFAULT '',
    environment text NOT NULL
                CONSTRAINT fleets_environment_check CHECK (environment ~ '^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$'),
    region      text NOT NULL
                CONSTRAINT fleets_region_check CHECK (region ~ '^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fleets_tenant_id_slug_key UNIQUE (tenant_id, slug),
    -- Target of the composite foreign key from vehicles: a vehicle can only
    -- ever point at a fleet of its own tenant.
    CONSTRAINT fleets_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE vehicles (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    fleet_id     bigint NOT NULL,
    vehicle_id   text COLLATE "C" NOT NULL
                 CONSTRAINT vehicles_vehicle_id_check CHECK (vehicle_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name         text NOT NULL CONSTRAINT vehicles_name_check CHECK (name <> ''),
    labels       jsonb NOT NULL DEFAULT '{}'
                 CONSTRAINT vehicles_labels_check CHECK (jsonb_typeof(labels) = 'object'),
    status       text NOT NULL DEFAULT 'pending'
                 CONSTRAINT vehicles_status_check CHECK (status IN ('pending', 'active', 'disabled', 'revoked')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    enrolled_at  timestamptz NULL,
    last_seen_at timestamptz NULL,
    -- Vehicle IDs are NATS subject tokens, unique per tenant (account).
    CONSTRAINT vehicles_tenant_id_vehicle_id_key UNIQUE (tenant_id, vehicle_id),
    -- RESTRICT: a fleet with vehicles cannot be deleted.
    CONSTRAINT vehicles_fleet_fkey FOREIGN KEY (tenant_id, fleet_id)
        REFERENCES fleets (tenant_id, id) ON DELETE RESTRICT
);

-- Keyset pagination of a fleet's vehicles by vehicle ID; also serves the
-- foreign key check when a fleet is deleted.
CREATE INDEX vehicles_tenant_id_fleet_id_vehicle_id_idx ON vehicles (tenant_id, fleet_id, vehicle_id);
-- Label selectors (labels @> '{"k":"v"}').
CREATE INDEX vehicles_labels_idx ON vehicles USING gin (labels jsonb_path_ops);

CREATE TABLE audit_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_type  text NOT NULL CONSTRAINT audit_events_actor_type_check CHECK (actor_type IN ('user', 'api_key', 'system')),
    actor_id    text NOT NULL,
    action      text NOT NULL CONSTRAINT audit_events_action_check CHECK (action <> ''),
    target_type text NOT NULL,
    target_id   text NOT NULL,
    source_ip   text NOT NULL DEFAULT '',
    request_id  text NOT NULL DEFAULT '',
    details     jsonb NULL CONSTRAINT audit_events_details_check CHECK (jsonb_typeof(details) = 'object')
);

-- Newest first per tenant, paginated by id.
CREATE INDEX audit_events_tenant_id_id_idx ON audit_events (tenant_id, id DESC);

CREATE TABLE idempotency_keys (
    scope        text NOT NULL, -- whose key it is (the API decides: a tenant, or a public endpoint)
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    status       int NULL -- NULL: the first request is still in flight
                 CONSTRAINT idempotency_keys_status_check CHECK (status BETWEEN 100 AND 599),
    content_type text NOT NULL DEFAULT '',
    location     text NOT NULL DEFAULT '',
    body         bytea NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz NULL,
    PRIMARY KEY (scope, key),
    CONSTRAINT idempotency_keys_completed_check CHECK ((status IS NULL) = (completed_at IS NULL))
);

-- Pruning of expired keys.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
