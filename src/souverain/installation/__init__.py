"""The installation: what exists once per souverain install (its first operator and
key, the local datacenter, the built-in models, the signing key)."""
