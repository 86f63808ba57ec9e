"""The one training loop every stage reuses."""
