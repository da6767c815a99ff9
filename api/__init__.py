"""Floodwatch's HTTP API (CONTRACT section 4): `create_app` in api.app, run by `python -m api`."""
