"""LETTER (Wang et al., CIKM'24): an RQ-VAE regularised by collaborative alignment with SASRec
and code diversity, collisions re-assigned by Sinkhorn, and a ranking-guided generation loss
(temperature inside the paper's 0.7-1.2 sweep)."""

from genrec.methods.spec import MethodSpec

LETTER = MethodSpec(
    name="letter",
    summary="collaborative + diversity regularised RQ-VAE, Sinkhorn collisions, loss τ = 0.8",
    defaults={
        "tokenizer": {"name": "letter", "collisions": "sinkhorn"},
        "trainer": {"temperature": 0.8},
    },
)
