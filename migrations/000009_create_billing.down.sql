DROP TABLE usage_reports;
DROP TABLE usage_hub_counters;
DROP TABLE usage_daily;
DROP TABLE usage_vehicle_days;
DROP TABLE billing_subscriptions;
DROP TABLE billing_events;
ALTER TABLE tenants DROP COLUMN billing_status, DROP COLUMN stripe_customer_id;
