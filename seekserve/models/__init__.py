"""Model architectures as `nn.Module`s over the paged KV cache, and their registry."""
