"""Structured scaling in four nouns: groups, importance, plan, apply."""
