"""TIGER (Rajput et al., NeurIPS'23): RQ-VAE semantic IDs of item text, a dedup code for
colliding items, an encoder-decoder trained with plain cross-entropy, beam search."""

from genrec.methods.spec import MethodSpec

TIGER = MethodSpec(
    name="tiger",
    summary="RQ-VAE over item text, dedup code, plain cross-entropy",
    defaults={
        "tokenizer": {"name": "rqvae", "collisions": "dedup"},
        "trainer": {"temperature": 1.0},
    },
)
