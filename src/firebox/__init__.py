"""Firebox: a self-hosted AWS Lambda. See ARCHITECTURE.md for the map of this package."""

__version__ = "0.1.0"
