"""Executors: checkout, build and lab jobs; no forge tokens, no database."""
