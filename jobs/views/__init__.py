"""The jobs app's views: dashboard pages (pages.py), operator actions (actions.py), the webhook trigger (webhooks.py)."""
