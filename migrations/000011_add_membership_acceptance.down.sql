ALTER TABLE memberships DROP COLUMN accepted_at;
