"""Filters: the chain runner here, built-in filters as plugins."""
