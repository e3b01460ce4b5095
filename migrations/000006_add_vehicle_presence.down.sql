DROP INDEX IF EXISTS vehicles_online_idx;
ALTER TABLE vehicles
    DROP CONSTRAINT IF EXISTS vehicles_presence_check,
    DROP COLUMN IF EXISTS presence_conn_start,
    DROP COLUMN IF EXISTS presence_conn_id,
    DROP COLUMN IF EXISTS last_disconnect_reason,
    DROP COLUMN IF EXISTS hub_node,
    DROP COLUMN IF EXISTS online;
