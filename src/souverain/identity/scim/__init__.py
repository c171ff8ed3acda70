"""SCIM 2.0 (RFC 7643, RFC 7644): the organisation's directory provisions its people and
groups. Resources are typed, filtered and patched by `scim2-models` (the python-scim
project's models, RFC 7644 filters and PATCH); what they mean for access is souverain's:
a group's members get what the organisation's group mapping gives that group (when its
group source is `scim`), a deactivated or deleted person loses every role and key there.
"""
