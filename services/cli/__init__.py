"""The `meterwire` command line."""
