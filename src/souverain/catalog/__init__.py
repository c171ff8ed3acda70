"""The catalog: the model registry, model cards, and the ready replicas that serve each
model (the gateway's routes)."""
