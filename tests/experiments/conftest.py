"""The serving tests' trained feed, shared with the closed-loop experiment tests."""

from tests.serving.conftest import feed_log, feed_world

__all__ = ["feed_log", "feed_world"]
