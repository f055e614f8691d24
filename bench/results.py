"""The results store: one JSON record per line in results/records.jsonl, append-only.

Each append rewrites the file through a temporary file and an atomic rename, so a crash never
leaves a half-written record, and existing lines are copied byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"


class ResultsStoreError(RuntimeError):
    """Raised when the results file cannot be read safely; nothing is written then."""


def record_key(parts: dict) -> str:
    """Hash everything that determines a number into a stable key."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


@dataclass
class ResultRecord:
    """One measured number with everything needed to reproduce it."""

    key: str
    model: dict
    method: dict  # name and full config
    metric: dict  # name and protocol
    value: float
    stage: str = "final"  # "final", or "init" for a QAT method before any training step
    stderr: float | None = None
    n_samples: int | None = None
    wall_time_s: float | None = None
    profile: str | None = None
    training: dict | None = None
    calibration: dict | None = None
    storage: dict | None = None  # the method's storage formula (StorageReport.to_dict, source "formula")
    storage_measured: dict | None = None  # the same keys measured on the artifact, plus "artifact_bytes"
    artifact: dict | None = None  # {"path", "sha256"} of the packed artifact the number was measured on
    environment: dict = field(default_factory=dict)
    command: str | None = None
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        return asdict(self)


def current_records(records: list[dict]) -> list[dict]:
    """Return `records` without those made by an earlier implementation version of their method.

    Versions are compared per model, revision, profile and method name: where a newer version
    of a method has records, its older records drop out of the tables. They stay in the store,
    and a setting no newer version was run on keeps its older records.
    """
    def group(record: dict) -> tuple:
        model = record["model"]
        return model.get("name"), model.get("revision"), record.get("profile"), record["method"]["name"]

    newest: dict[tuple, int] = {}
    for record in records:
        version = record["method"].get("version", 1)
        newest[group(record)] = max(newest.get(group(record), version), version)
    return [record for record in records if record["method"].get("version", 1) == newest[group(record)]]


class ResultStore:
    """Append-only JSONL store of result records."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / RECORDS_FILE

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ResultsStoreError(
                        f"{self.path}:{number} is not valid JSON ({error}). Fix or remove that line; "
                        "no record was written."
                    ) from error
        return records

    def find(self, key: str) -> dict | None:
        """Return the latest record with `key`, or None."""
        found = None
        for record in self.records():
            if record.get("key") == key:
                found = record
        return found

    def append(self, record: ResultRecord) -> None:
        self.records()  # refuse to append behind a corrupt line
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.path.read_bytes() if self.path.exists() else b""
        if existing and not existing.endswith(b"\n"):
            existing += b"\n"
        line = json.dumps(record.to_dict(), sort_keys=True, default=str).encode() + b"\n"
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=".records-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(existing + line)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info("Stored %s %s = %.6g", record.method.get("name"), record.metric.get("name"), record.value)
