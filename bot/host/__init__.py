"""What a labgate process brings up: config, store, broker, supervised children, timers, retries."""
