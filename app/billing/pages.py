"""The Billing page (placeholder until its routes land)."""
