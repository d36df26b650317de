"""The training engine: loop (trainer), optimisation step, validation and best model, checkpoint
state and exact resume, schedules and RNG state."""
