-- Vehicle presence (controlplane/presence.go): whether the vehicle's leaf
-- link to a hub is open, on which hub node, why the last link closed, and
-- the connection the state was derived from — (hub node, connection ID,
-- start) identifies one link — so that connect and disconnect events that
-- arrive out of order (a vehicle moving between nodes) resolve per link.
ALTER TABLE vehicles
    ADD COLUMN online                 boolean NOT NULL DEFAULT false,
    ADD COLUMN hub_node               text NOT NULL DEFAULT '',
    ADD COLUMN last_disconnect_reason text NOT NULL DEFAULT '',
    ADD COLUMN presence_conn_id       bigint NULL
        CONSTRAINT vehicles_presence_conn_id_check CHECK (presence_conn_id >= 0),
    ADD COLUMN presence_conn_start    timestamptz NULL,
    -- An online vehicle names its node and link.
    ADD CONSTRAINT vehicles_presence_check CHECK (
        NOT online OR (hub_node <> '' AND presence_conn_id IS NOT NULL AND presence_conn_start IS NOT NULL));

-- Reconciliation reads every online vehicle, across tenants.
CREATE INDEX vehicles_online_idx ON vehicles (hub_node) WHERE online;
