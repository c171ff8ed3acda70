"""Business logic, one module per noun. Functions are keyword-only, take a session and
raise `core.errors` types; they never import the web framework or Ray."""
