DROP TABLE IF EXISTS tenant_streams;
