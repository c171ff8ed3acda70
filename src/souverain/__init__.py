"""souverain: a self-hostable sovereign AI cloud."""

__version__ = "0.1.0"
