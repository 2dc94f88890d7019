"""Sharded ingest: worker processes that decode updates for the one owner of the model."""
