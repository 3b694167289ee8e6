import os

# As in tryfleet itself: Ray reads this when imported, and every cluster requires its token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
