"""TRACE core: prompts, backbones, the reason-then-embed encoder, the candidate index, M-BEIR I/O and metrics."""
