-- Portal accounts and sessions (controlplane/session.go, issue 7).

-- When the user proved the address: by the portal signup's confirmation
-- link, or a reset or invitation link. Users created outside the portal
-- (the API signup, operators) count as verified: the existing ones from
-- their creation, later ones through the default. The portal's signup and
-- invitations insert NULL, and login needs a verified address.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz NULL DEFAULT now();
UPDATE users SET email_verified_at = created_at;

-- Signed-in portal users. The cookie holds fps_<id>_<secret>; the row keeps
-- the secret's SHA-256. The role is not stored: it is read from the
-- membership on every request, so a role change applies at once, and
-- removing the membership deletes its sessions (the foreign key cascades).
-- Times come from the control plane's clock; idle expiry is last_seen_at
-- plus the configured idle lifetime.
CREATE TABLE sessions (
    id           text COLLATE "C" PRIMARY KEY
                 CONSTRAINT sessions_id_check CHECK (id ~ '^[a-z2-7]{16}$'),
    token_hash   bytea NOT NULL
                 CONSTRAINT sessions_token_hash_key UNIQUE
                 CONSTRAINT sessions_token_hash_check CHECK (length(token_hash) = 32), -- SHA-256
    user_id      uuid NOT NULL,
    tenant_id    uuid NOT NULL,
    csrf         text NOT NULL CONSTRAINT sessions_csrf_check CHECK (length(csrf) >= 16),
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    source_ip    text NOT NULL DEFAULT '',
    user_agent   text NOT NULL DEFAULT '',
    CONSTRAINT sessions_membership_fkey FOREIGN KEY (tenant_id, user_id)
        REFERENCES memberships (tenant_id, user_id) ON DELETE CASCADE
);

-- A user's sessions (sign-out everywhere after a reset); also serves the
-- cascade from memberships.
CREATE INDEX sessions_user_id_tenant_id_idx ON sessions (user_id, tenant_id);
-- Cleanup of expired and idle sessions.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX sessions_last_seen_at_idx ON sessions (last_seen_at);

-- One-time links mailed to users (fpt_<id>_<secret>; the row keeps the
-- secret's SHA-256): address confirmation, password reset, invitation.
-- used_at makes each single use. A confirmation or invitation belongs to
-- a membership and goes with it; a reset belongs to the user alone.
CREATE TABLE user_tokens (
    id         text COLLATE "C" PRIMARY KEY
               CONSTRAINT user_tokens_id_check CHECK (id ~ '^[a-z2-7]{16}$'),
    token_hash bytea NOT NULL
               CONSTRAINT user_tokens_token_hash_key UNIQUE
               CONSTRAINT user_tokens_token_hash_check CHECK (length(token_hash) = 32), -- SHA-256
    purpose    text NOT NULL
               CONSTRAINT user_tokens_purpose_check CHECK (purpose IN ('verify_email', 'reset_password', 'invite')),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id  uuid NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz NULL,
    CONSTRAINT user_tokens_tenant_check CHECK ((purpose = 'reset_password') = (tenant_id IS NULL)),
    -- MATCH SIMPLE: a reset token (no tenant) is not checked.
    CONSTRAINT user_tokens_membership_fkey FOREIGN KEY (tenant_id, user_id)
        REFERENCES memberships (tenant_id, user_id) ON DELETE CASCADE
);

-- A user's tokens (voided after a reset); also serves the cascades.
CREATE INDEX user_tokens_user_id_tenant_id_idx ON user_tokens (user_id, tenant_id);
-- Cleanup of expired tokens.
CREATE INDEX user_tokens_expires_at_idx ON user_tokens (expires_at);
