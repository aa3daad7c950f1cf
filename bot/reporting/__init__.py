"""Forge-neutral reporting: what each job's status and each pipeline's summary should say, kept in
sync with the forges through sinks each forge implements (bot/reporting/sinks.py)."""
