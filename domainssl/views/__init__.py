"""Domain-tuned views, applied on whole batches (on the GPU when there is one)."""
