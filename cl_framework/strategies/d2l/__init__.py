"""Dream2Learn (D2L): classifier-driven soft-prompt dreaming through a frozen generator.

* :mod:`.plugin`: the ``d2l`` strategy (dream episodes, dream heads, training with dreams);
* :mod:`.dreaming`: the prompt objective and its optimisation;
* :mod:`.oracle`: when a prompt's optimisation stops (rule on features, learned, pluggable);
* :mod:`.inventory`: the prompts kept instead of images, and their exact regeneration.
"""

from cl_framework.strategies.d2l.plugin import Dream2Learn

__all__ = ["Dream2Learn"]
