"""The thin REST API (OpenAI Batch API convention)."""
