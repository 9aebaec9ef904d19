-- One database per service (split mode): run once by the postgres image
-- on its first start.
CREATE DATABASE opsconductor_jobs OWNER opsconductor;
CREATE DATABASE opsconductor_executions OWNER opsconductor;
CREATE DATABASE opsconductor_scheduling OWNER opsconductor;
CREATE DATABASE opsconductor_audit OWNER opsconductor;
