"""Leaderboard reproduction of published numbers and validation-based sweeps."""
