"""Forge adapters: one package per forge, each with sansio.py (verify + parse) and a reporter."""
