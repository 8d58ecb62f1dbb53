-- The vault's own database and role, beside Airflow's; only the API server is given them.
CREATE ROLE mlsecrets LOGIN PASSWORD 'mlsecrets';
CREATE DATABASE mlsecrets OWNER mlsecrets;
