"""Fixtures for mqtt tests."""
