"""Pure placement: a snapshot and a request in, a Placement or Unschedulable(reasons) out.

No database, no Ray, no clock. Shaped as a filter chain, where every filter returns the
nodes it kept and a reason for each node it dropped, followed by a scorer chain.
"""
