"""The measurement loop: stratified review sampling, the review store, the reviewer's page and
outcome events joined to routing decisions (docs/review.md)."""
