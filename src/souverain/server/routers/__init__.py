"""Thin routers: parse, authorise (via the service), call one service, return."""
