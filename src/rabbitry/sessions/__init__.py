"""Multi-tenant session revocation: USER, SESSION and DISPATCH (SPEC part 3)."""
