"""TokenRec (Qu, Fan, Zhao and Li, 2024): users and items tokenized by the masked
vector-quantized tokenizer over LightGCN's embeddings (the users' over their histories
propagated one LightGCN step, the vectors they are coded from; genrec/cf/lightgcn.py); the
encoder reads the user's tokens and the history's, and its mean state (or the decoder's first
state), projected into the LightGCN item space, is the query of a nearest-neighbour search
over every item (genrec/methods/tokenrec/preference.py): one pass per user, no beam search.

Unlike the official code (an LLM prompted with the tokens, a cosine loss with one random
negative, checkpoints chosen on the test data), genrec keeps its protocol: leave-one-out,
validation selects, the test is read once; the loss defaults to a sampled softmax.
"""

from typing import Any

from omegaconf import DictConfig

from genrec.methods.spec import MethodSpec
from genrec.methods.tokenrec.preference import retrieval, retrieval_loss
from genrec.schema import Invalid
from genrec.tokenizers.config import TokenizerName
from genrec.trainer.config import UserTokens


def model_fields(cfg: DictConfig) -> dict[str, int | str]:
    """The user's tokens before the history, and a head into the LightGCN item space."""
    tokens = cfg.trainer.tokenrec.user_tokens is not UserTokens.none
    return {
        "user_code_levels": cfg.tokenizer.num_levels if tokens else 0,
        "user_codebook_size": cfg.tokenizer.codebook_size if tokens else 0,
        "embedding_adapter_dim": cfg.lightgcn.dim,
        "preference_head": cfg.trainer.tokenrec.head,
    }


def check(cfg: Any) -> None:
    if cfg.tokenizer.name is not TokenizerName.mq:
        raise Invalid(
            "tokenizer.name",
            f"is {cfg.tokenizer.name.value}; TokenRec reads MQ tokens of users and items (mq)",
        )
    if cfg.tokenizer.tables != 1:
        raise Invalid("tokenizer.tables", "must be 1: TokenRec reads one MQ table")
    causal = cfg.trainer.model.encoder == "causal"
    if causal and cfg.trainer.tokenrec.user_tokens is UserTokens.history:
        raise Invalid(
            "trainer.tokenrec.user_tokens",
            "is history: each prefix's tokens come from its own history, and one causal pass "
            "over a window reads one set; use table or none, or the bidirectional encoder",
        )
    if cfg.trainer.model.num_user_buckets:
        raise Invalid(
            "trainer.model.num_user_buckets", "must be 0: TokenRec reads the user's MQ tokens"
        )


TOKENREC = MethodSpec(
    name="tokenrec",
    summary="MQ tokens of users and items, preference vector, nearest-neighbour retrieval",
    # History-coded user tokens (the default) need an encoder pass per prefix.
    defaults={
        "tokenizer": {"name": "mq", "collisions": "dedup"},
        "trainer": {"model": {"encoder": "bidirectional"}},
    },
    objective=retrieval_loss,
    ranker=retrieval,
    model_fields=model_fields,
    check=check,
)
