"""The operator's manual tools (status, tombstone, purge, dupes, demo) register here."""
