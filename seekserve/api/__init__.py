"""HTTP: the DeepSeek wire contract over the engine. The only package that knows wire types."""
