"""End-to-end recipes that chain library stages (what ``edgeadapt demo`` runs)."""
