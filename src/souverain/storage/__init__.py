"""Tenants' files at rest: encrypted objects in a store of an allowed datacenter."""
