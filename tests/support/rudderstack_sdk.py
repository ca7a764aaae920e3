"""Sends an identify and a track with RudderStack's Python SDK (PyPI
`rudder-sdk-python`) at its default settings (gzip on; an identify's traits in
`context.traits`), and a screen call, to a dripline engine.

Usage: rudderstack_sdk.py BASE_URL WRITE_KEY USER_ID
"""
import sys

import rudderstack.analytics as analytics

base, key, user = sys.argv[1:4]
errors = []
analytics.write_key = key
analytics.dataPlaneUrl = base
analytics.on_error = lambda error, items: errors.append(str(error))
analytics.identify(user, {"email": f"{user}@example.org", "first_name": "Rudi"})
analytics.track(user, "Newsletter Subscribed", {"source": "rudderstack"})
analytics.screen(user, name="Settings", properties={"theme": "dark"})
analytics.flush()
analytics.shutdown()
print(f"gzip: {analytics.gzip}; errors: {errors}")
