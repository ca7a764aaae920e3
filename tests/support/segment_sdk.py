"""Sends an identify, a group and a track with the official Segment Python SDK (PyPI
`segment-analytics-python`) at its default settings, to a dripline engine.

Usage: segment_sdk.py BASE_URL WRITE_KEY USER_ID [gzip]
"""
import sys

import segment.analytics as analytics

base, key, user = sys.argv[1:4]
errors = []
analytics.write_key = key
analytics.host = base
analytics.gzip = sys.argv[4:5] == ["gzip"]
analytics.on_error = lambda error, items: errors.append(str(error))
analytics.identify(user, {"email": f"{user}@example.org", "first_name": "Sam"})
analytics.group(user, "acme-1", {"name": "Acme", "plan": "pro"})
analytics.track(user, "Newsletter Subscribed", {"source": "sdk"})
analytics.flush()
analytics.shutdown()
print(f"errors: {errors}")
