"""The Object Relation Transformer captioner: ``geometry`` (the box-relational bias, float32) and
``captioner`` (encoder, decoder with a KV cache, ORT's LayerNorm), on the shared attention module."""
