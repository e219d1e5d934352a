"""``tierguard sim``: an OpenAI-compatible model that serves recorded real model outcomes.

Used for load tests, demos, replays and the operator's end-to-end tests. The recorded answer,
usage and latency of one model are served for every prompt in an outcomes file
(docs/outcomes-format.md); token log-probabilities are laid out so that the proxy's confidence
aggregation gives back the recorded confidence.
"""

from .data import SimData, tokenize
from .server import Faults, Simulator, Stats, parse_request, serve

__all__ = ["Faults", "SimData", "Simulator", "Stats", "parse_request", "serve", "tokenize"]
