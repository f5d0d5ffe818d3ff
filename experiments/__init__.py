"""Reproducible studies: ``python -m experiments run STUDY --budget smoke|small|full``."""
