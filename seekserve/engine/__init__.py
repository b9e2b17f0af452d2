"""The engine: requests, KV blocks, scheduling and the step loop. Knows token ids, not text."""
