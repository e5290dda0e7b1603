"""The run's configuration: presets, the sizing rule and the growth schedule."""
