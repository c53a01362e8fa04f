"""The worker stage (on every worker host): background removal and the embeddings of a batch."""
