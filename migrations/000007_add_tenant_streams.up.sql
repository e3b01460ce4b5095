-- Tenant history streams (DESIGN.md §3, docs/twin.md): the control plane
-- creates one JetStream stream per tenant account and region on the hubs
-- (name TWIN, ingest.> stored as fleet.<env>.veh.<vid>.>) and records here
-- what it applied, so that the account push path provisions each region
-- once and updates a stream only when its configuration changed (plan,
-- limits, code). The stream itself is the truth for its messages; this is
-- only the provisioning record.
CREATE TABLE tenant_streams (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    region             text NOT NULL
                       CONSTRAINT tenant_streams_region_check CHECK (region ~ '^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$'),
    stream             text NOT NULL
                       CONSTRAINT tenant_streams_stream_check CHECK (stream ~ '^[A-Za-z0-9_-]{1,32}$'),
    -- Fingerprint of the desired configuration (controlplane.StreamSpec.Hash):
    -- equal means nothing to do.
    config_hash        text NOT NULL CONSTRAINT tenant_streams_config_hash_check CHECK (config_hash <> ''),
    -- What the hubs applied (replicas can be capped by the region's size).
    replicas           int NOT NULL CONSTRAINT tenant_streams_replicas_check CHECK (replicas BETWEEN 1 AND 5),
    max_age_seconds    bigint NOT NULL CONSTRAINT tenant_streams_max_age_seconds_check CHECK (max_age_seconds >= 0),
    max_bytes          bigint NOT NULL CONSTRAINT tenant_streams_max_bytes_check CHECK (max_bytes >= -1),
    duplicates_seconds bigint NOT NULL CONSTRAINT tenant_streams_duplicates_seconds_check CHECK (duplicates_seconds >= 0),
    provisioned_at     timestamptz NOT NULL DEFAULT now(), -- first created
    updated_at         timestamptz NOT NULL DEFAULT now(), -- last applied
    PRIMARY KEY (tenant_id, region)
);
