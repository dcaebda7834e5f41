"""Multi-tenant session revocation: USER, SESSION and DISPATCH."""
