-- Plan downgrade grace (docs/plans.md): after a change to a plan with a
-- smaller vehicle limit while the tenant has more vehicles, the account
-- keeps the leaf-connection limit of grace_plan until grace_until; the
-- periodic reconcile job then applies the plan's own limit and clears both.
ALTER TABLE tenants
    ADD COLUMN grace_plan  text NULL CONSTRAINT tenants_grace_plan_check CHECK (grace_plan IN ('free', 'scale')),
    ADD COLUMN grace_until timestamptz NULL,
    ADD CONSTRAINT tenants_grace_check CHECK ((grace_plan IS NULL) = (grace_until IS NULL));

CREATE INDEX tenants_grace_until_idx ON tenants (grace_until) WHERE grace_until IS NOT NULL;
