"""Integrations with web frameworks (optional extras): nothing here is imported by the core."""
