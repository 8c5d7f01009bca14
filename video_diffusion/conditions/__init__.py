"""Conditions of a conditional model: their kind, text encoding and requests.

`kinds` is JAX-free (the data pipeline uses it); `encoding` turns raw
conditions (labels, texts, vectors) into what Unet3D takes; `text` is the
BERT text encoder.
"""
