"""Test-only probe (``extra_modules=[tests.ddp_probe]``, ``+strategy._ddp_probe={}``): after each
experience every rank writes a digest of its buffer to ``<run dir>/probe_rank<r>.jsonl``."""

from __future__ import annotations

import hashlib
import json

from cl_framework.engine.distributed import global_rank
from cl_framework.engine.plugin import StrategyPlugin
from cl_framework.scenarios import Experience
from cl_framework.strategies import register_strategy


@register_strategy
class DDPProbe(StrategyPlugin):
    name = "_ddp_probe"

    def after_experience(self, experience: Experience) -> None:
        runner = self.ctx.runner
        rank = global_rank(runner.trainer_cfg.devices) if runner.world_size > 1 else 0
        content = self.buffer.all(["x", "y"])
        rows = [
            hashlib.sha1(x.cpu().numpy().tobytes() + bytes([int(y)])).hexdigest()
            for x, y in zip(content["x"], content["y"], strict=True)
        ]
        record = {
            "experience": experience.index,
            "rank": rank,
            "size": len(rows),
            "num_seen": self.buffer.num_seen,
            "digest": hashlib.sha1("".join(rows).encode()).hexdigest(),
            "rows": rows,
        }
        with (runner.output_dir / f"probe_rank{rank}.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
