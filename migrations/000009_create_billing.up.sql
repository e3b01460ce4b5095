-- Metering and billing (controlplane/billing.go, usage.go, docs/billing.md).

-- A tenant's Stripe customer (created at its first checkout) and the state
-- of its billing as the webhooks last told it.
ALTER TABLE tenants
    ADD COLUMN stripe_customer_id text NULL CONSTRAINT tenants_stripe_customer_id_key UNIQUE
        CONSTRAINT tenants_stripe_customer_id_check CHECK (stripe_customer_id <> ''),
    ADD COLUMN billing_status text NOT NULL DEFAULT 'none'
        CONSTRAINT tenants_billing_status_check CHECK (billing_status IN ('none', 'active', 'past_due', 'canceled'));

-- Every Stripe event received, by its ID: an event is processed once (the
-- row is written in the transaction that applies it).
CREATE TABLE billing_events (
    id          text PRIMARY KEY CONSTRAINT billing_events_id_check CHECK (id <> ''),
    type        text NOT NULL,
    created_at  timestamptz NOT NULL, -- the event's own creation time at Stripe
    tenant_id   uuid NULL REFERENCES tenants (id) ON DELETE SET NULL,
    outcome     text NOT NULL CONSTRAINT billing_events_outcome_check
                CHECK (outcome IN ('applied', 'stale', 'ignored', 'unknown_tenant')),
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX billing_events_tenant_id_idx ON billing_events (tenant_id, received_at DESC) WHERE tenant_id IS NOT NULL;

-- Stripe subscriptions of a tenant, each as of the newest event applied to
-- it (event_at): an older event arriving late does not overwrite a newer
-- state, and a canceled subscription never comes back (Stripe's are final).
-- The tenant's plan follows from the set: scale while one is entitled.
CREATE TABLE billing_subscriptions (
    id                   text PRIMARY KEY CONSTRAINT billing_subscriptions_id_check CHECK (id <> ''),
    tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    status               text NOT NULL,
    current_period_start timestamptz NULL,
    current_period_end   timestamptz NULL,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    event_at             timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX billing_subscriptions_tenant_id_idx ON billing_subscriptions (tenant_id);

-- Billable vehicle-days: one row per tenant, UTC day and vehicle that was
-- registered (not revoked) at any time that day, and whether it was seen
-- online that day.
CREATE TABLE usage_vehicle_days (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day        date NOT NULL,
    vehicle_id text COLLATE "C" NOT NULL,
    online     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, day, vehicle_id)
);

-- The day's rows across tenants (sampling, usage reporting).
CREATE INDEX usage_vehicle_days_day_idx ON usage_vehicle_days (day);

-- Per tenant and UTC day: the plan (scale when the tenant was on scale at
-- any sample that day) and the messages and bytes its account sent and
-- received through the hubs.
CREATE TABLE usage_daily (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day       date NOT NULL,
    plan      text NOT NULL CONSTRAINT usage_daily_plan_check CHECK (plan IN ('free', 'scale')),
    msgs_in   bigint NOT NULL DEFAULT 0 CONSTRAINT usage_daily_msgs_in_check CHECK (msgs_in >= 0),
    msgs_out  bigint NOT NULL DEFAULT 0 CONSTRAINT usage_daily_msgs_out_check CHECK (msgs_out >= 0),
    bytes_in  bigint NOT NULL DEFAULT 0 CONSTRAINT usage_daily_bytes_in_check CHECK (bytes_in >= 0),
    bytes_out bigint NOT NULL DEFAULT 0 CONSTRAINT usage_daily_bytes_out_check CHECK (bytes_out >= 0),
    PRIMARY KEY (tenant_id, day)
);

-- The account counters each hub node reported last, to turn its running
-- totals into deltas. A node's server ID changes when it restarts (its
-- counters start again at zero).
CREATE TABLE usage_hub_counters (
    node       text NOT NULL,
    account    text NOT NULL,
    server_id  text NOT NULL,
    msgs_in    bigint NOT NULL,
    msgs_out   bigint NOT NULL,
    bytes_in   bigint NOT NULL,
    bytes_out  bigint NOT NULL,
    sampled_at timestamptz NOT NULL,
    PRIMARY KEY (node, account)
);

-- Vehicle-days reported to Stripe as meter events. Each report is written
-- (quantity and identifier frozen) before it is sent, so a retry after a
-- crash or a lost answer sends the very same event with the same
-- idempotency key; reported_at is set once Stripe accepted it. Stripe
-- remembers identifiers and idempotency keys for 24 hours only, so a
-- report not accepted within 23 hours is not resent (abandoned_at: an
-- operator reconciles it with Stripe's meter summaries) rather than risk
-- counting it twice. Quantities of a day add up to its vehicle-days
-- (seq = 1, 2, ... as vehicles join).
CREATE TABLE usage_reports (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day         date NOT NULL,
    seq         int NOT NULL CONSTRAINT usage_reports_seq_check CHECK (seq >= 1),
    customer_id text NOT NULL,
    quantity    bigint NOT NULL CONSTRAINT usage_reports_quantity_check CHECK (quantity > 0),
    identifier  text NOT NULL CONSTRAINT usage_reports_identifier_key UNIQUE,
    event_at    timestamptz NOT NULL,
    attempts    int NOT NULL DEFAULT 0,
    last_error  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    reported_at  timestamptz NULL,
    abandoned_at timestamptz NULL,
    PRIMARY KEY (tenant_id, day, seq)
);

CREATE INDEX usage_reports_pending_idx ON usage_reports (created_at) WHERE reported_at IS NULL AND abandoned_at IS NULL;
