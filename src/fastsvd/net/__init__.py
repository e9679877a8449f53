"""Outbound HTTP, guarded: what the server fetches (``image_url``) and where it may connect
(``guard``: public addresses only, checked on every connection, redirects included)."""
