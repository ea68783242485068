"""Gateways the agent plugs into by their own extension points (LiteLLM proxy callbacks); none is imported here."""
