"""A deployment's own placement constraints, in the policy vocabulary (core/policy.py).

The controller places replicas under them (∩ the organisation's ceiling), and the gateway's
routes obey them too: a shared replica serves a fine-tuned model only where that model's
own deployment may run.
"""

from __future__ import annotations

from souverain.core.policy import Policy
from souverain.db.tables import DeploymentRow


def constraints_of(deployment: DeploymentRow) -> Policy:
    """The deployment's own placement constraints, in the policy vocabulary."""
    placement = deployment.placement or {}
    jurisdictions = placement.get("jurisdictions")
    operators = placement.get("operator_jurisdictions")
    return Policy(
        jurisdictions=None if jurisdictions is None else frozenset(jurisdictions),
        datacenters=frozenset(deployment.datacenters) if deployment.datacenters else None,
        certifications=frozenset(placement.get("certifications") or ()),
        operator_jurisdictions=None if operators is None else frozenset(operators),
    )
