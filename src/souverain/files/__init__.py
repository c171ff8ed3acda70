"""Tenants' files: where they may be stored, their keys, quota, reading and deletion; the
bytes themselves are sealed by `storage/`."""
