"""The input pipeline: sources, preprocessing, conditions and the grain loader.

JAX-free (grain worker processes import it). `DataSpec` carries what it
needs from a run config; `make_source(spec)` and `make_loader(spec, ...)` build
the pipeline.
"""
