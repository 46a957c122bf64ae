"""LARS and learning-rate schedules."""
