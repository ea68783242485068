"""`meterwire mcp`: a read-only Model Context Protocol server over Reporting, fleet status and budgets."""
