"""``obs-flap``: heads by ``obs``, neurons by ``flap``, the pair measured best under LIAR (benchmarks/README.md:
obs's heads lower uniform LIAR's perplexity; its neurons changed the layer error by 1–2 % and cost far more).
One name, so that ``criterion="obs-flap"`` can be a default while ``criterion="wanda-sp"`` still sets both kinds.
"""

from __future__ import annotations

import reprune.criteria.baselines  # noqa: F401  registers flap, which the pair names
import reprune.criteria.obs  # noqa: F401  registers obs
from reprune.criteria import register_pair

register_pair("obs-flap", attention="obs", ffn="flap",
              description="heads by obs (structured OBS under LIAR), neurons by flap")
