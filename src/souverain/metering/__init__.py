"""Metering: usage records (exactly one per admitted request), their rollups and reports,
budgets, prices, invoices, and energy intervals."""
