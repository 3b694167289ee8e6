"""The front door: the only client-facing process of a fleet, an HTTP API with tenants, API
keys, quotas and request ids, served from a Ray actor on the head (see actor.py)."""
