"""The `souverain` command line. Reaches a running server only through `client/`."""
