"""Budget rules shared by the control plane and the gateway agent: scopes, calendar windows, decisions, pricing and
per-event amounts.

Pure functions on plain values (and the generated pricing contract), importing nothing from services/: the server
counts and the agent enforces with the same definitions (the agent must stand alone, so this package is the one
both sides import).
"""
