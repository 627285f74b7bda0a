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
    keys, offsets, items = shard_arrays(path, sha256, num_items)
    for index, key in enumerate(keys.tolist()):
        yield key, items[offsets[index] : offsets[index + 1]]


def shard_arrays(
    path: str | Path, sha256: str | None = None, num_items: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shard's samples as arrays: user keys [U], offsets [U + 1] and items (int64), sample u
    being items[offsets[u]:offsets[u + 1]]. Checked as `read_shard` says."""
    path = Path(path)
    blob = path.read_bytes()
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise DataError(
            str(path),
            "checksum mismatch: the shard was damaged or replaced; run genrec prepare again",
        )
    own = _own_layout(blob)
    keys, offsets, items = own if own is not None else _tar_members(path)
    _check_items(path, keys, offsets, items, num_items)
    return keys, offsets, items


def _own_layout(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The samples of a shard laid out as `_tar` writes it (every header, name and .npy header
    checked), read with array arithmetic; None for any other tar, which `_tar_members` reads
    (and reports, if damaged)."""
    starts, sizes, keys = [], [], []
    position = 0
    while position + _BLOCK <= len(blob) and blob[position]:
        name = blob[position : position + 100].split(b"\0", 1)[0]
        key = name[: -len(_SUFFIX)]
        if not (name.endswith(_SUFFIX) and key.isdigit()):
            return None
        try:
            size = int(blob[position + 124 : position + 135], 8)
        except ValueError:
            return None
        starts.append(position)
        sizes.append(size)
        keys.append(int(key))
        position += _BLOCK + -(-size // _BLOCK) * _BLOCK
    if position > len(blob) or blob[position:].strip(b"\0"):
        return None
    raw = np.frombuffer(blob, dtype=np.uint8)
    start, size = np.array(starts, dtype=np.int64), np.array(sizes, dtype=np.int64)
    lengths = (size - _NPY_HEADER_BYTES) // 4
    if (lengths < 0).any() or ((size - _NPY_HEADER_BYTES) % 4).any():
        return None
    headers = raw[start[:, None] + np.arange(_BLOCK)]
    stored = (headers[:, 148:154].astype(np.int64) - ord("0")) @ (8 ** np.arange(5, -1, -1))
    summed = headers.sum(axis=1, dtype=np.int64) - headers[:, 148:156].sum(axis=1) + 8 * ord(" ")
    if (stored != summed).any() or not np.isin(headers[:, 156], (0, ord("0"))).all():
        return None
    unique, which = np.unique(lengths, return_inverse=True)
    npy = raw[(start + _BLOCK)[:, None] + np.arange(_NPY_HEADER_BYTES)]
    if not np.array_equal(npy, np.stack([_npy_header(int(n)) for n in unique])[which]):
        return None
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    first = (start + _BLOCK + _NPY_HEADER_BYTES) // 4
    words = np.repeat(first - offsets[:-1], lengths) + np.arange(offsets[-1])
    return np.array(keys, dtype=np.int64), offsets, raw.view("<i4")[words].astype(np.int64)


def _tar_members(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Any valid tar's `*.items.npy` members, read with tarfile."""
    keys, samples = [], []
    member = None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(MEMBER_SUFFIX):
                    continue
                keys.append(int(member.name.rsplit("/", 1)[-1][: -len(MEMBER_SUFFIX)]))
                data = tar.extractfile(member).read()
                samples.append(np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64))
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        where = f" after member {member.name}" if member is not None else ""
        raise DataError(str(path), f"corrupt or truncated shard{where}: {err}") from err
    _check_end(path, end)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in samples])]).astype(np.int64)
    items = np.concatenate(samples) if samples else np.zeros(0, dtype=np.int64)
    return np.array(keys, dtype=np.int64), offsets, items


def _check_items(
    path: Path, keys: np.ndarray, offsets: np.ndarray, items: np.ndarray, num_items: int | None
) -> None:
    """Every item id one of the dataset's; the first that is not is reported with its member."""
    if num_items is None or not items.size:
        return
    bad = np.flatnonzero((items < 0) | (items >= num_items))
    if bad.size:
        member = int(np.searchsorted(offsets, bad[0], side="right")) - 1
        name = f"{keys[member]:0{_MIN_NAME_DIGITS}d}{MEMBER_SUFFIX}"
        raise DataError(
            str(path),
            f"member {name}: item id {int(items[bad[0]])} is not one of the {num_items} items",
        )
