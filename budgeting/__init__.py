"""Budget rules shared by the control plane and the gateway agent: scopes, calendar windows and decisions.

Pure functions on plain values, importing nothing of meterwire's: the server counts and the agent enforces with
the same definitions (the agent must stand alone, so this package is the one both sides import).
"""
