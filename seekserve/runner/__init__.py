"""Turns a scheduler step into one batched forward pass on the device."""
