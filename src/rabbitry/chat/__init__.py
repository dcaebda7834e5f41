"""The horizontally scaled WebSocket chat."""
