"""Integration fixtures. The tiny model store (`tiny_store`) is shared with e2e tests: tests/conftest.py."""
