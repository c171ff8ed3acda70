"""Batches: what a tenant asks for (`service`) and the runner that answers every line
exactly once through the gateway (`runner`)."""
