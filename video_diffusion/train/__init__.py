"""Training: the train state, optimiser, pure train step, run set-up and loop."""
