"""The heartbeat service."""
