"""The algorithm registry: name -> declaration (see `learner.algorithms.base`). Adding an algorithm = its module + one
line here."""

from __future__ import annotations

from learner.algorithms.base import Algorithm
from learner.algorithms.d3po import D3PO
from learner.algorithms.ddpo import DDPO
from learner.algorithms.draft import AlignProp, DRaFT
from learner.algorithms.grpo import GRPO
from learner.algorithms.nft import NFT
from learner.algorithms.rlcm import RLCM
from learner.algorithms.rocm import ROCM

ALGORITHMS: dict[str, type[Algorithm]] = {
    "rlcm": RLCM,
    "grpo": GRPO,
    "rocm": ROCM,
    "draft": DRaFT,
    "alignprop": AlignProp,
    "ddpo": DDPO,
    "d3po": D3PO,
    "nft": NFT,
}
