"""Composition root: train, evaluate, benchmark and toy entry points."""
