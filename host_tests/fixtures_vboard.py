"""Fixtures for vboard tests."""
