"""Evidence: the hash-chained audit log, written in the transaction of every change,
sealed, read and pruned."""
