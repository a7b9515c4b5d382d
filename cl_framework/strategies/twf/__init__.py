"""TwF (Transfer without Forgetting): the plug-in and its parts.

* :mod:`.plugin`: the ``twf`` strategy (sibling, losses, buffer fields, mask recomputation);
* :mod:`.attention`: task-conditioned channel + spatial attention, binary Gumbel masks;
* :mod:`.losses`: teacher margin, partial L2, FP distance, diversity and mask-replay losses;
* :mod:`.joint_transform`: crop + flip applied jointly to buffer images and their masks.
"""

from cl_framework.strategies.twf.plugin import TwF, TwFConfig

__all__ = ["TwF", "TwFConfig"]
