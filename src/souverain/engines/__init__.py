"""Engine processes: how to start llama.cpp or vLLM for a replica, and keep it alive.

Nothing here imports Ray: `cluster/` runs these inside Ray actors.
"""
