"""Reconcilers that make the database's desired state true on the cluster.

One controller is active at a time (a lease in the database). Each reconciler follows
load → process → apply: rows are claimed with a lease token, Ray is driven outside any
transaction, and results are written back only where `id` and the token still match.
"""
