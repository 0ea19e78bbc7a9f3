"""Wheels for an offline install into an environment that already has part of the stack.

GPU images and cluster nodes bring their own Python and torch (built for their CUDA driver) and often
no network. This writes, per profile, the wheels such a target lacks, with the versions of
requirements.lock where the target does not fix them, into ``<out>/<profile>/``, plus a
``requirements.txt`` naming what to install:

    pip install --no-index --find-links <out>/<profile> -r <out>/<profile>/requirements.txt

Profiles: ``bare`` (``fit`` with tracking.mlflow=false), ``mlflow`` (plus the embedded sqlite MLflow
store: mlflow-skinny, SQLAlchemy, Alembic; no ``mlflow ui`` server), ``all`` (every extra: the full
MLflow, Ray Tune, rliable). Package data the suite never loads is left out of the wheels (STRIPPED):
dm_control's locomotion, dog and test assets and mujoco's ``experimental/`` (studio, GUI). The
Python modules stay, so every import still works; only those tasks' models cannot load.

Usage: bash scripts/wheelhouse.sh --python 3.12 --platform manylinux_2_28_x86_64 --have have.txt
       [--profiles bare mlflow all] [--out wheelhouse] [--max-mib 64]
``have.txt``: what the target has, one ``name==version`` a line (its ``pip freeze``), or a bare name
where the version is not known (scripts/gpu_image_packages.txt: the H200 image). Run it with a
Python of the target's version (PYTHON=...): pip evaluates dependency markers with the running one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
PROFILES = {
    "bare": [],
    "mlflow": ["mlflow-skinny", "sqlalchemy", "alembic"],
    "all": ["mlflow", "ray[tune]", "rliable", "arch", "pandas"],
}
MUST_FIT = ("bare", "mlflow")  # with --max-mib (64: what the GPU image accepts per run)
# Published as source only; pure Python, so a wheel built here installs anywhere.
SOURCE_ONLY = ("rliable",)
TARGETS_OWN = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# Wheel paths never read by the suite: (package, path prefix, whether .py files under it stay).
STRIPPED = [
    ("dm_control", "dm_control/locomotion/", False),  # keep the modules: dm_control.suite.dog imports them
    ("dm_control", "dm_control/suite/dog_assets/", False),
    ("dm_control", "dm_control/mujoco/testing/assets/", False),
    ("mujoco", "mujoco/experimental/", True),
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str | None]:
    """Requirement lines -> {canonical name: version}; a bare name (version unknown) maps to None.
    Comments and blank lines are skipped."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[.*\])?\s*(==\s*([^\s;#]+))?\s*(#.*)?$", line)
        if match and not line.lstrip().startswith("#"):
            version = match.group(4)
            pins[canonical(match.group(1))] = version.split("+")[0] if version else None
    return pins


def compatible_platforms(platform: str) -> list[str]:
    """``platform`` and the older manylinux tags a target of that tag also installs (pip does not
    widen an explicit ``--platform``): manylinux_2_28_x86_64 -> ..._2_27_..., ..., manylinux2014_x86_64."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    return [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)] + [f"manylinux2014_{arch}"]


def pip(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, **kwargs)


def resolve(requirements: list[str], constraints: Path, target: list[str], work: Path) -> list[dict]:
    """What pip would install for ``requirements`` on the target (name, version, url), from scratch."""
    report = work / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "--target",
        str(work / "unused"), "-c", str(constraints), *target, *requirements)
    return [{"name": canonical(item["metadata"]["name"]), "version": item["metadata"]["version"],
             "url": item["download_info"]["url"]} for item in json.loads(report.read_text())["install"]]


def strip_wheel(wheel: Path) -> int:
    """Rewrite ``wheel`` without its STRIPPED paths (and their RECORD lines); bytes saved."""
    rules = [(prefix, keep_py) for package, prefix, keep_py in STRIPPED
             if canonical(wheel.name.split("-")[0]) == canonical(package)]
    if not rules:
        return 0

    def dropped(name: str) -> bool:
        return any(name.startswith(prefix) and not (keep_py and name.endswith(".py")) for prefix, keep_py in rules)

    before = wheel.stat().st_size
    stripped = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            if dropped(info.filename):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode()
            out.writestr(info, data)
    stripped.replace(wheel)
    return before - wheel.stat().st_size


def build_profile(name: str, extra: list[str], project_wheel: Path, constraints: Path, have: dict[str, str | None],
                  target: list[str], out: Path, work: Path) -> float:
    """Write profile ``name`` into ``out/name``; its size in MiB."""
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    requirements = [str(project_wheel), *extra]
    needed = [item for item in resolve(requirements, constraints, target, work) if item["name"] not in have]
    others = [f"{item['name']}=={item['version']}" for item in needed if item["name"] != "mlr-lightning"]
    if others:
        pip("download", "--quiet", "--no-deps", "-d", str(folder), *target, *others)
    shutil.copy(project_wheel, folder)
    saved = sum(strip_wheel(wheel) for wheel in folder.glob("*.whl"))
    (folder / "requirements.txt").write_text("\n".join(["mlr_lightning", *extra]) + "\n")
    size = sum(wheel.stat().st_size for wheel in folder.glob("*.whl")) / MIB
    print(f"{name}: {len(needed)} wheels, {size:.1f} MiB (package data left out: {saved / MIB:.1f} MiB) in {folder}")
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", required=True, help="the target's Python version, e.g. 3.12")
    parser.add_argument("--platform", required=True, help="the target's wheel platform, e.g. manylinux_2_28_x86_64")
    parser.add_argument("--have", required=True, type=Path,
                        help="what the target has: its `pip freeze` (name==version lines), or names alone")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--out", type=Path, default=ROOT / "wheelhouse")
    parser.add_argument("--max-mib", type=float, help="exit non-zero if the bare or mlflow profile is larger")
    args = parser.parse_args()

    have = read_pins(args.have)
    target = ["--only-binary=:all:", "--python-version", args.python]
    for platform in compatible_platforms(args.platform):
        target += ["--platform", platform]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The target's versions, then the lock's for everything it lacks; the lock's torch and its CUDA
        # libraries are the target's business.
        lock = {name: version for name, version in read_pins(ROOT / "requirements.lock").items()
                if not TARGETS_OWN.match(name) and name not in have}
        pins = lock | {name: version for name, version in have.items() if version}
        constraints = work / "constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
        pip("wheel", "--quiet", "--no-deps", "-w", str(work / "project"), str(ROOT))
        if "all" in args.profiles:
            built = [f"{name}=={lock[name]}" for name in SOURCE_ONLY if name in lock]
            if built:
                pip("wheel", "--quiet", "--no-deps", "-w", str(work / "built"), *built)
                target += ["--find-links", str(work / "built")]
        project_wheel = next((work / "project").glob("mlr_lightning-*.whl"))
        sizes = {name: build_profile(name, PROFILES[name], project_wheel, constraints, have, target, args.out, work)
                 for name in args.profiles}
    too_big = [name for name in MUST_FIT if args.max_mib is not None and sizes.get(name, 0) > args.max_mib]
    if too_big:
        print(f"over --max-mib {args.max_mib:g}: {', '.join(too_big)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
