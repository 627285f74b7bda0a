"""One reader per input format; each returns a RawLog."""

from collections.abc import Callable

from genrec.data_pipeline.config import DataConfig, DataFormat
from genrec.data_pipeline.raw_log import RawLog
from genrec.data_pipeline.readers.amazon import read_amazon
from genrec.data_pipeline.readers.lcrec import read_lcrec
from genrec.data_pipeline.readers.movielens import read_movielens
from genrec.data_pipeline.readers.sequences import read_sequences
from genrec.data_pipeline.readers.synthetic import read_synthetic
from genrec.data_pipeline.readers.tabular_log import read_log

READERS: dict[DataFormat, Callable[[DataConfig], RawLog]] = {
    DataFormat.lcrec: read_lcrec,
    DataFormat.sequences: read_sequences,
    DataFormat.log: read_log,
    DataFormat.amazon: read_amazon,
    DataFormat.movielens: read_movielens,
    DataFormat.synthetic: read_synthetic,
}


def read_raw_log(cfg: DataConfig) -> RawLog:
    return READERS[cfg.format](cfg)
