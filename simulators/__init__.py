"""Simulated flood sensors: a pure water model and the publisher `python -m simulators`."""
