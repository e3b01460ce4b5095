-- River's schema, second part
-- (the job queue: github.com/riverqueue/river v0.51.2, driver riverpgxv5,
-- migration line "main", versions 006-008).
--
-- GENERATED from River itself, not written by hand. A throwaway Go program
-- called rivermigrate.New(riverpgxv5.New(nil), nil).AllVersions() and
-- printed the SQLUp of each version in order, with the schema template
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

-- River main/006 [up] bulk unique

CREATE OR REPLACE FUNCTION river_job_state_in_bitmask(bitmask BIT(8), state river_job_state)
RETURNS boolean
LANGUAGE SQL
IMMUTABLE
AS $$
    SELECT CASE state
        WHEN 'available' THEN get_bit(bitmask, 7)
        WHEN 'cancelled' THEN get_bit(bitmask, 6)
        WHEN 'completed' THEN get_bit(bitmask, 5)
        WHEN 'discarded' THEN get_bit(bitmask, 4)
        WHEN 'pending'   THEN get_bit(bitmask, 3)
        WHEN 'retryable' THEN get_bit(bitmask, 2)
        WHEN 'running'   THEN get_bit(bitmask, 1)
        WHEN 'scheduled' THEN get_bit(bitmask, 0)
        ELSE 0
    END = 1;
$$;

--
-- Add `river_job.unique_states` and bring up an index on it.
--
-- This column may exist already if users manually created the column and index
-- as instructed in the changelog so the index could be created `CONCURRENTLY`.
--
ALTER TABLE river_job ADD COLUMN IF NOT EXISTS unique_states BIT(8);

-- This statement uses `IF NOT EXISTS` to allow users with a `river_job` table
-- of non-trivial size to build the index `CONCURRENTLY` out of band of this
-- migration, then follow by completing the migration.
CREATE UNIQUE INDEX IF NOT EXISTS river_job_unique_idx ON river_job (unique_key)
    WHERE unique_key IS NOT NULL
      AND unique_states IS NOT NULL
      AND river_job_state_in_bitmask(unique_states, state);

-- Remove the old unique index. Users who are actively using the unique jobs
-- feature and who wish to avoid deploy downtime may want od drop this in a
-- subsequent migration once all jobs using the old unique system have been
-- completed (i.e. no more rows with non-null unique_key and null
-- unique_states).
DROP INDEX river_job_kind_unique_key_idx;

-- River main/007 [up] notification outbox sqlite jsonb and sql cleanup

--
-- Notification outbox.
--

CREATE TABLE river_notification (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload text NOT NULL,
    topic text NOT NULL,
    CONSTRAINT topic_length CHECK (length(topic) > 0 AND length(topic) < 128)
);

CREATE INDEX river_notification_created_at_idx ON river_notification (created_at);
CREATE INDEX river_notification_topic_id_idx ON river_notification (topic, id);

--
-- SQLite JSONB conversion.
--
-- No-op. Postgres already stores River JSON columns as jsonb.

--
-- SQL cleanup.
--

--
-- Drop unused tables `river_client` and `river_client_queue`.
--

DROP TABLE river_client_queue;
DROP TABLE river_client;

--
-- Adds `DEFAULT 25` to `river_job.max_attempts`.
--

ALTER TABLE river_job
    ALTER COLUMN max_attempts SET DEFAULT 25;

--
-- Changes `river_queue.updated_at` to have a default of `CURRENT_TIMESTAMP`.
--

ALTER TABLE river_queue
    ALTER COLUMN updated_at SET DEFAULT CURRENT_TIMESTAMP;

-- River main/008 [up] job id autoincrement

-- No-op. Postgres sequences already prevent automatically generated job IDs
-- from being reused.
SELECT 1;

-- Record the versions, as rivermigrate does after applying each one.

INSERT INTO river_migration (line, version) VALUES ('main', 6), ('main', 7), ('main', 8);
