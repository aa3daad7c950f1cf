"""GitHub adapter: webhook verification and parsing (sansio), reporting back through the API."""
