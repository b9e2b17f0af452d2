"""Model loading: GGUF files (header + dequantized weights) and the local model cache."""
