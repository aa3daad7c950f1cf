"""Sans-I/O core: pure functions and dataclasses."""
