"""Encoders, projection head, NT-Xent loss and the SimCLR module that joins them."""
