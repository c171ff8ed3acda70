"""Wire types of the control-plane API, shared by the server and `client/`.

Request bodies end in `Request` and refuse unknown fields, so a typo or an attempt to
set a field the caller does not own (`org_id`, `role` where not allowed) is a 422, not
silently ignored.
"""
