"""Features of whole collections: every image of a folder as a table of embeddings."""
