"""Deployments: the desired state (`service`), the reconciler that places and counts
replicas (`reconciler`), and the observer that follows every engine (`observer`)."""
