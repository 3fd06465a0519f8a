"""TRACE core: prompts, backbones, the reason-then-embed encoder, the candidate index, M-BEIR I/O and metrics.

Public API:
    encoder = trace_core.load_model("path/to/checkpoint")
    results = encoder.encode_queries([Query(text=..., instruction=...)], reasoning="auto")
    for event in encoder.stream_query(query): ...      # CotDelta ... then QueryResult
    decide_route(first_step_logits, emb_token_id, stop_token_ids, reasoning, routing_bias)  # -> FirstStep
    matrix = encoder.encode_candidates([Candidate(text=...), Candidate(image=...)])
"""

from .encoder import Encoder, EncoderConfig, TraceEncoder, decide_route
from .loading import ModelNotFoundError, load_model
from .records import REASONING_MODES, Candidate, CotDelta, FirstStep, InputError, Query, QueryResult

__all__ = [
    "REASONING_MODES",
    "Candidate",
    "CotDelta",
    "Encoder",
    "EncoderConfig",
    "FirstStep",
    "InputError",
    "ModelNotFoundError",
    "Query",
    "QueryResult",
    "TraceEncoder",
    "decide_route",
    "load_model",
]
