"""Model families: one adapter per family, found through the registry in ``registry.py``."""
