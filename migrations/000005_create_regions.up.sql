-- Hub regions (DESIGN.md §1): where fleets live, what vehicles and grants
-- connect to, and the hub nodes the control plane pushes account JWTs to.
-- `fleetplane admin region add` upserts a row; the control plane's
-- configured regions are upserted at start (a declarative bootstrap) and
-- the service then uses what this table holds. Hub connections are made at
-- start: a region added here is used after a control-plane restart.
CREATE TABLE regions (
    -- The same rule as fleets.region (000001).
    name         text PRIMARY KEY
                 CONSTRAINT regions_name_check CHECK (name ~ '^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$'),
    display_name text NOT NULL
                 CONSTRAINT regions_display_name_check CHECK (display_name <> '' AND length(display_name) <= 200),
    -- Hub leafnode URLs vehicles connect to (tls://hub-1.example:7422).
    leaf_urls    text[] NOT NULL DEFAULT '{}',
    -- Hub client URLs grants and the nats CLI use.
    client_urls  text[] NOT NULL DEFAULT '{}',
    -- PEM bundle that verifies the hubs' certificates; '' = system roots.
    ca_bundle    text NOT NULL DEFAULT '',
    -- The hub nodes: [{"name": server_name, "url": system-account client URL}].
    nodes        jsonb NOT NULL DEFAULT '[]'
                 CONSTRAINT regions_nodes_check CHECK (jsonb_typeof(nodes) = 'array'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
