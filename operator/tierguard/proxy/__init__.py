"""The cascade proxy: an OpenAI-compatible HTTP server in front of N model tiers."""
