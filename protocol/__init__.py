"""The wire protocol between sender and receiver (streaming issue)."""
