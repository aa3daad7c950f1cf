"""Forge-neutral intake: an event becomes the change's state, core.decide says what to do, and the
actions are carried out here. A forge is reached only through a ForgeDesk (bot/intake/desk.py)."""
