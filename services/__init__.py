"""The meterwire control plane: gRPC services over SQLite or PostgreSQL."""
