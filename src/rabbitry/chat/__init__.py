"""The horizontally scaled WebSocket chat (SPEC part 4)."""
