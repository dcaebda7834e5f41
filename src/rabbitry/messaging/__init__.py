"""The core library: messages, topology, publishing and consuming. Imports no web or CLI code."""
