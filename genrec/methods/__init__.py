"""The methods genrec implements, each a `MethodSpec` over the shared core."""

from genrec.errors import ConfigError
from genrec.methods.etegrec import ETEGREC
from genrec.methods.letter import LETTER
from genrec.methods.mtgrec import MTGREC
from genrec.methods.spec import MethodSpec
from genrec.methods.tiger import TIGER
from genrec.methods.tokenrec import TOKENREC

METHODS: dict[str, MethodSpec] = {
    spec.name: spec for spec in (TIGER, LETTER, MTGREC, ETEGREC, TOKENREC)
}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"config key 'method' is {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
