"""Shoal: a self-hostable serverless SQL database on SQLite."""

__version__ = "0.1.0"
