"""Fixtures for cloud tests."""
