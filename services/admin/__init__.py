"""Environments and API tokens."""
