"""Fixtures for prov tests."""
