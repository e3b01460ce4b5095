-- Invitations take effect only when accepted (controlplane/session.go).
--
-- accepted_at NULL is a pending invitation: it grants nothing (sign-in,
-- sessions and owner counts read accepted memberships only) until the
-- invitee spends the invitation's link. A password reset never accepts.
-- The memberships of a signup or of an operator's tenant creation are
-- accepted when created (postgres.Store.CreateMembership); an invitation
-- (CreateInvitation) inserts NULL. No default: a path that forgets to say
-- makes a membership that grants nothing.
ALTER TABLE memberships ADD COLUMN accepted_at timestamptz NULL;

-- Existing memberships count as accepted since they were created, except
-- invitations still pending under the old rule (an invited user who never
-- set a password): those stay pending, so that a later password reset
-- cannot activate them. Their invitation links (if still valid) accept them.
UPDATE memberships m SET accepted_at = m.created_at
WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id AND u.password_hash IS NOT NULL)
   OR NOT EXISTS (
        SELECT 1 FROM audit_events e
        WHERE e.tenant_id = m.tenant_id AND e.action = 'member.invite'
          AND e.target_type = 'user' AND e.target_id = m.user_id::text);
