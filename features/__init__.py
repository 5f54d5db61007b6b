"""Spark feature jobs: ingest + validate, vocabularies, splits, sequences, CTR samples, item content."""
