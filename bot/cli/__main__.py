"""`python -m bot.cli`: how labgate starts its own children (bot/host/supervise.py)."""

from bot.cli.main import main

raise SystemExit(main())
