"""Sovereignty: the policies that say where a tenant's data may be processed, and the
signed residency reports that prove where it was."""
