"""Run-time tenancy: keys and teams made through the admin API, administrators, the audit trail."""
