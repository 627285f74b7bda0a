"""WebDataset shards of training sequences: one sample per user, key = user id, `items.npy`.

The writer lays out whole shards with numpy (tarfile costs ~40 us a member, which would
dominate `prepare` at 10^7 interactions); the reader accepts any valid tar.
"""

import hashlib
import io
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genrec.data_pipeline.preprocess import ragged_gather
from genrec.errors import DataError
from genrec.provenance import file_digest

MEMBER_SUFFIX = ".items.npy"
_SUFFIX = MEMBER_SUFFIX.encode()
_BLOCK = 512
_NPY_HEADER_BYTES = 128


def _header_template() -> np.ndarray:
    info = tarfile.TarInfo("")
    info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
    header = np.frombuffer(info.tobuf(tarfile.USTAR_FORMAT), dtype=np.uint8).copy()
    header[148:156] = ord(" ")  # the checksum is computed with its own field as spaces
    return header


_TEMPLATE = _header_template()
_MIN_NAME_DIGITS = 9


def key_digits(num_users: int) -> int:
    """Digits of the member names' user keys: 9, or more for ids of 10^9 and beyond."""
    return max(_MIN_NAME_DIGITS, len(str(max(num_users - 1, 0))))


def _octal_digits(values: np.ndarray, width: int) -> np.ndarray:
    """ASCII octal digits, zero-padded, one row per value."""
    shifts = 3 * np.arange(width - 1, -1, -1)
    return (((values[:, None] >> shifts) & 7) + ord("0")).astype(np.uint8)


def _tar_headers(users: np.ndarray, sizes: np.ndarray, digits: int) -> np.ndarray:
    """ustar headers for members `{user:0{digits}d}.items.npy` of the given sizes, one row each."""
    headers = np.tile(_TEMPLATE, (users.size, 1))
    powers = 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)
    headers[:, :digits] = users[:, None] // powers % 10 + ord("0")
    headers[:, digits : digits + len(_SUFFIX)] = np.frombuffer(_SUFFIX, dtype=np.uint8)
    headers[:, 124:135] = _octal_digits(sizes, 11)
    headers[:, 135] = 0
    checksum = headers.sum(axis=1, dtype=np.int64)
    headers[:, 148:154] = _octal_digits(checksum, 6)
    headers[:, 154] = 0
    return headers


def _npy_header(length: int) -> np.ndarray:
    """The 128-byte .npy v1.0 header of a 1-D little-endian int32 array."""
    text = f"{{'descr': '<i4', 'fortran_order': False, 'shape': ({length},), }}"
    raw = b"\x93NUMPY\x01\x00v\x00" + (text.ljust(117) + "\n").encode()
    return np.frombuffer(raw, dtype=np.uint8)


def shard_bytes(
    users: np.ndarray, offsets: np.ndarray, items: np.ndarray, digits: int = _MIN_NAME_DIGITS
) -> bytes:
    """A tar holding `items[offsets[u]:offsets[u+1]]` as `{u:0{digits}d}.items.npy` for each u."""
    local, payload = ragged_gather(items, offsets[users], offsets[users + 1])
    return _tar(users, local, payload, digits)


def _tar(keys: np.ndarray, offsets: np.ndarray, payload: np.ndarray, digits: int) -> bytes:
    """A tar of member `{keys[k]:0{digits}d}.items.npy` = `payload[offsets[k]:offsets[k+1]]`.

    Laid out with array arithmetic: member k is a 512-byte header, a 128-byte .npy header and
    the int32 payload, padded to a multiple of 512 bytes.
    """
    lengths = np.diff(offsets)
    sizes = _NPY_HEADER_BYTES + 4 * lengths
    spans = _BLOCK + -(-sizes // _BLOCK) * _BLOCK
    starts = np.concatenate([[0], np.cumsum(spans)[:-1]])
    out = np.zeros(int(spans.sum()) + 2 * _BLOCK, dtype=np.uint8)
    if keys.size and len(str(int(keys.max()))) > digits:
        raise ValueError(f"user id {int(keys.max())} does not fit a {digits}-digit member name")
    out.reshape(-1, _BLOCK)[starts // _BLOCK] = _tar_headers(keys, sizes, digits)
    unique = np.unique(lengths)
    npy = np.stack([_npy_header(int(n)) for n in unique])
    out.reshape(-1, _NPY_HEADER_BYTES)[(starts + _BLOCK) // _NPY_HEADER_BYTES] = npy[
        np.searchsorted(unique, lengths)
    ]
    word = np.repeat((starts + _BLOCK + _NPY_HEADER_BYTES) // 4 - offsets[:-1], lengths)
    out.view("<i4")[word + np.arange(payload.size)] = payload
    return out.tobytes()


def write_shard(
    path: Path, keys: np.ndarray, offsets: np.ndarray, payload: np.ndarray, digits: int
) -> dict:
    """Writes the shard of users `keys` (sequences as CSR `offsets`, `payload`) and returns
    its manifest entry."""
    blob = _tar(keys, offsets, payload, digits)
    path.write_bytes(blob)
    lengths = np.diff(offsets)
    return {
        "path": f"{path.parent.name}/{path.name}",
        "users": int(keys.size),
        "examples": int(np.maximum(lengths - 1, 0).sum()),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }


def _write_shard(
    path: Path, users: np.ndarray, offsets: np.ndarray, items: np.ndarray, digits: int
) -> dict:
    local, payload = ragged_gather(items, offsets[users], offsets[users + 1])
    return write_shard(path, users, local, payload, digits)


def shard_chunks(has_training: np.ndarray, users_per_shard: int, seed: int) -> list[np.ndarray]:
    """The users of each shard, in order: those with a training item, shuffled (seeded)."""
    users = np.random.default_rng(seed).permutation(np.flatnonzero(has_training))
    return [users[i : i + users_per_shard] for i in range(0, max(users.size, 1), users_per_shard)]


def write_shards(
    out_dir: Path, offsets: np.ndarray, items: np.ndarray, users_per_shard: int, seed: int
) -> list[dict]:
    """Shuffle users (seeded) into shards of `users_per_shard`; users with no training item are out.

    Two threads build, hash and write shards side by side (numpy, hashing and I/O drop the GIL).
    """
    chunks = shard_chunks(np.diff(offsets) > 0, users_per_shard, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"train-{index:06d}.tar" for index in range(len(chunks))]
    digits = [key_digits(offsets.size - 1)] * len(chunks)
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = pool.map(
            _write_shard, paths, chunks, [offsets] * len(chunks), [items] * len(chunks), digits
        )
        return list(tqdm(jobs, total=len(chunks), desc="shards", unit="shard", leave=False))


def _check_end(path: Path, offset: int) -> None:
    """tarfile stops quietly at a damaged header; only zeros may follow the last member."""
    with open(path, "rb") as f:
        f.seek(offset)
        if f.read().strip(b"\0"):
            raise DataError(str(path), f"corrupt shard: unreadable tar header at byte {offset}")


def read_shard(
    path: str | Path, sha256: str | None = None, num_items: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(user, training sequence) for each sample; damage is a DataError naming the shard.

    With `sha256` (from the manifest) the whole shard is checked before anything is yielded;
    with `num_items` every item id is checked to be one of the dataset's items.
    """
    path = Path(path)
    if sha256 is not None and file_digest(path) != sha256:
        raise DataError(
            str(path),
            "checksum mismatch: the shard was damaged or replaced; run genrec prepare again",
        )
    member = None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(MEMBER_SUFFIX):
                    continue
                key = member.name.rsplit("/", 1)[-1][: -len(MEMBER_SUFFIX)]
                items = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
                _check_items(path, member.name, items, num_items)
                yield int(key), items.astype(np.int64, copy=False)
            end = tar.offset
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        where = f" after member {member.name}" if member is not None else ""
        raise DataError(str(path), f"corrupt or truncated shard{where}: {err}") from err
    _check_end(path, end)


def _check_items(path: Path, member: str, items: np.ndarray, num_items: int | None) -> None:
    if num_items is None or not items.size:
        return
    low, high = int(items.min()), int(items.max())
    if low < 0 or high >= num_items:
        bad = low if low < 0 else high
        raise DataError(
            str(path), f"member {member}: item id {bad} is not one of the {num_items} items"
        )
