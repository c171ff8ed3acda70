"""Long work, made true by the controller: deployments and their replicas, fine-tuning,
reinforcement and evaluation jobs, batches.

One controller is active at a time (a lease in the database). Each kind of work follows
load → process → apply: rows are claimed with a lease token, Ray and the network are used
outside any transaction, and results are written back only where `id` and the token still
match. Each kind also keeps the service that tenants call to ask for it (`service.py`)."""
