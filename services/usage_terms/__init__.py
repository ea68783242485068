"""How people ask about usage and how its figures read, shared by every edge that talks to people (the CLI, the
MCP server, the console): query.py turns names and ranges into Reporting requests, figures.py formats what
comes back, records.py turns rows into export records and files. No edge's own machinery (typer, MCP, HTTP)
is imported here; each edge names the fields in its own words.
"""
