"""Exports of an organisation's data: one tar archive with a signed manifest (`core.exports`),
written by the controller, kept encrypted with the organisation's key."""
