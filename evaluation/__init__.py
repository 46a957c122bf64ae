"""Evaluation protocols for frozen SimCLR representations (linear evaluation, transfer)."""
