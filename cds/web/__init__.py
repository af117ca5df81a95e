"""The HTTP layer: errors, request bodies, dependencies (state, authentication), ops routes."""
