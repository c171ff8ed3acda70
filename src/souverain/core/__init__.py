"""Pure domain types. Imports nothing internal, touches no I/O."""
