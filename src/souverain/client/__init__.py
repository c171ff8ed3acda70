"""A typed HTTP client for /api, used by the CLI and the tests. It never imports the server."""

from souverain.client.client import SouverainClient
from souverain.client.errors import ApiError

__all__ = ["ApiError", "SouverainClient"]
