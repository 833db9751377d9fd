"""Wire protocol between sender and receiver."""
