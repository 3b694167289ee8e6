"""Builders for unit tests: small real objects with the defaults spelled out."""

from nodeagent.fake_hv import make_fake_image as make_image

__all__ = ["make_image"]
