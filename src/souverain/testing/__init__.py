"""Test helpers shipped with the package: factories, a live-server runner, a stand-in engine.

Used by souverain's own tests and benchmarks; useful to anyone extending it.
"""
