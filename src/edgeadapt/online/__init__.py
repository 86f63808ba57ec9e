"""Online stage (edge): proxy extraction from the knowledge base, retraining under drift, sync."""
