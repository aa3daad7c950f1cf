"""A revision's pipeline: submitted, dispatched, its results recorded, cancelled or re-run."""
