"""Process set-up before JAX starts: the CPU allocator, XLA options and the
start-up line. JAX-free."""
