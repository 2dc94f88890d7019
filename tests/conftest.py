"""Shared pytest configuration: fixtures for real services live in tests/fixtures/."""

pytest_plugins = ["tests.fixtures.mosquitto", "tests.fixtures.victoria"]
