"""What runs on a node: engine processes and their supervisor, training workers, sealed
objects decrypted only here, the private node directory.

Nothing here imports Ray: `cluster/` runs these inside Ray actors."""
