-- Reverts River's schema, second part
-- (the job queue: github.com/riverqueue/river v0.51.2, driver riverpgxv5,
-- migration line "main", versions 008 down to 006).
--
-- GENERATED from River itself, not written by hand. A throwaway Go program
-- called rivermigrate.New(riverpgxv5.New(nil), nil).AllVersions() and
-- printed the SQLDown of each version in reverse order, with the schema template
-- placeholders ("TEMPLATE: schema" comments) resolved to the default schema
-- ("") by rivershared/sqlctemplate, as rivermigrate itself resolves them:
-- the SQL `river migrate-get` prints for these versions. It also printed
-- the river_migration bookkeeping rivermigrate does after each version, so
-- that River's own tooling (river migrate-up, rivermigrate Validate) agrees.
-- Do not edit. When River is upgraded, generate the versions it adds the
-- same way (Migrator.GetVersion) into a new migration.
--
-- River's schema is split over 000002 (River 001-005) and 000003 (River
-- 006-008) because golang-migrate runs each file in one transaction, and
-- Postgres refuses to use an enum value in the transaction that added it
-- (SQLSTATE 55P04): River 004 adds river_job_state 'pending' and River 006
-- uses it in an immutable function. rivermigrate runs each version in its
-- own transaction for the same reason.

-- Forget the versions, as rivermigrate does after reverting each one.

DELETE FROM river_migration WHERE line = 'main' AND version IN (6, 7, 8);

-- River main/008 [down] job id autoincrement

-- No-op. Postgres sequences already prevent automatically generated job IDs
-- from being reused.
SELECT 1;

-- River main/007 [down] notification outbox sqlite jsonb and sql cleanup

--
-- SQL cleanup rollback.
--

--
-- Add back unused tables `river_client` and `river_client_queue`.
--

CREATE UNLOGGED TABLE river_client (
    id text PRIMARY KEY NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    metadata jsonb NOT NULL DEFAULT '{}',
    paused_at timestamptz,
    updated_at timestamptz NOT NULL,
    CONSTRAINT name_length CHECK (char_length(id) > 0 AND char_length(id) < 128)
);

CREATE UNLOGGED TABLE river_client_queue (
    river_client_id text NOT NULL REFERENCES river_client (id) ON DELETE CASCADE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    max_workers bigint NOT NULL DEFAULT 0,
    metadata jsonb NOT NULL DEFAULT '{}',
    num_jobs_completed bigint NOT NULL DEFAULT 0,
    num_jobs_running bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (river_client_id, name),
    CONSTRAINT name_length CHECK (char_length(name) > 0 AND char_length(name) < 128),
    CONSTRAINT num_jobs_completed_zero_or_positive CHECK (num_jobs_completed >= 0),
    CONSTRAINT num_jobs_running_zero_or_positive CHECK (num_jobs_running >= 0)
);

--
-- Revert addition of `DEFAULT 25` to `river_job.max_attempts`.
--

ALTER TABLE river_job
    ALTER COLUMN max_attempts DROP DEFAULT;

--
-- Changes `river_queue.updated_at` to revert the default of `CURRENT_TIMESTAMP`.
--

ALTER TABLE river_queue
    ALTER COLUMN updated_at DROP DEFAULT;

--
-- SQLite JSONB conversion rollback.
--
-- No-op. Postgres already stores River JSON columns as jsonb.

--
-- Notification outbox rollback.
--

DROP TABLE river_notification;

-- River main/006 [down] bulk unique

--
-- Drop `river_job.unique_states` and its index.
--

DROP INDEX river_job_unique_idx;

ALTER TABLE river_job
    DROP COLUMN unique_states;

CREATE UNIQUE INDEX IF NOT EXISTS river_job_kind_unique_key_idx ON river_job (kind, unique_key) WHERE unique_key IS NOT NULL;

--
-- Drop `river_job_state_in_bitmask` function.
--
DROP FUNCTION river_job_state_in_bitmask;
