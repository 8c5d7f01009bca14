"""Device meshes, shardings and multi-process runs."""
