"""The one HTTP layer: the app factory, edge middleware, shared dependencies, and every
router of the server (`routers/`, one module per noun: /v1 inference, files, batches,
fine-tuning, and the /api control plane)."""
