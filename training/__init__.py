"""Training-step building blocks: gradient caching for large contrastive batches in small memory."""
