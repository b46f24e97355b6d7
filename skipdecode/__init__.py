"""skipdecode: LLM serving with SkipDecode (batched, KV-cached token-level layer skipping)."""
