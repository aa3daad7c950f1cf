"""Patchwork adapter: the events poller, the REST client, and checks on every patch of a series."""
