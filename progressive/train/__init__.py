"""The divergence-triangle objective, the growth plan and the training loop."""
