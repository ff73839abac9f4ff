"""dynastore: a highly available, decentralised, eventually consistent key-value store (Dynamo design)."""

__version__ = "0.1.0"
