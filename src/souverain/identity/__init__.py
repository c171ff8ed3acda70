"""People's identities: single sign-on with the organisation's own OpenID provider, group
mappings to roles, SCIM provisioning by the organisation's directory, service accounts.

Everything here ends in the tenancy model the rest of souverain already enforces: a person
signed in by their provider acts through a key of theirs (never shown, never given out) whose
effective scopes are bounded by the membership the mapping gave them; a directory that
deactivates someone revokes their keys, and with them every console session and every key
those keys minted.
"""
