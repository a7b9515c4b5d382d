"""The shared replay buffer of a run and its selection policies."""

from cl_framework.buffer.policies import POLICIES
from cl_framework.buffer.replay_buffer import ReplayBuffer

__all__ = ["POLICIES", "ReplayBuffer"]
