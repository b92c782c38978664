"""The control plane: configuration, policy, run-context intake, loops, actuators, agent API."""
