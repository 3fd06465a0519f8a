"""TRACE core: prompts, backbones, the reason-then-embed encoder, the candidate index, M-BEIR I/O and metrics.

Public API:
    encoder = trace_core.load_model("path/to/checkpoint")
    results = encoder.encode_queries([Query(text=..., instruction=...)], reasoning="auto")
    for event in encoder.stream_query(query): ...      # CotDelta ... then QueryResult
    matrix = encoder.encode_candidates([Candidate(text=...), Candidate(image=...)])
"""

from .encoder import EncoderConfig, TraceEncoder
from .loading import ModelNotFoundError, load_model
from .records import Candidate, CotDelta, InputError, Query, QueryResult

__all__ = [
    "Candidate",
    "CotDelta",
    "EncoderConfig",
    "InputError",
    "ModelNotFoundError",
    "Query",
    "QueryResult",
    "TraceEncoder",
    "load_model",
]
