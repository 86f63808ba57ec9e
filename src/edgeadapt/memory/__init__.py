"""Memory of on-device retraining: measuring a step's peak, the knobs that lower it, and the search."""
