"""Fine-tuning jobs (supervised, reinforcement, evaluation): what a tenant asks for
(`service`, `recipe`), the reconciler that runs them (`reconciler`), their events, their
energy budget, and the model a succeeded job becomes (`outcome`)."""
