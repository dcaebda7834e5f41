"""Fault tests on the local three-node cluster (``scripts/cluster``): see conftest.py."""
