"""The three networks, sampling and Langevin dynamics."""
