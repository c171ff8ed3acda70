"""Tenancy: organisations, projects, members, users, API keys and their lineage,
authentication, and console sessions."""
