"""The offline bundle of ``benchmarks.gpu_check``: what the GPU machine lacks, carried with the work tree.

The GPU machine this project is lent (``/work/.library/device/KINDS.md``, kind ``nvidia-h200``) has torch,
torchvision, Lightning, timm... but not lightly, jsonargparse (nor its ``signatures`` extra:
``docstring-parser``, ``typeshed-client``) or litdata, reaches no package registry and receives the work
tree plus at most about 60 MiB of extra files. So:

* **here** (a CPU machine with registry access, the project installed):
  ``python -m benchmarks.gpu_check --prepare .gpu_bundle`` calls :func:`prepare`, which writes into one
  folder (git-ignored) the wheels of every distribution the project needs (``pyproject.toml``'s
  dependencies, followed through the installed packages' own requirements) that the image does not have
  (:data:`IMAGE_PACKAGES`) or has at a version outside what is required (:data:`IMAGE_VERSIONS`), for
  CPython 3.12 on manylinux x86-64 (the image) and for this interpreter (the CPU dress rehearsal); a
  stratified subset of the CIFAR-10 npz sized so that the whole folder stays under ``max_mib``;
  ``requirements.txt`` (the project's dependency specifiers) and ``bundle.json`` (what is in it).
* **there**: ``python3 -m benchmarks.gpu_check --bundle .gpu_bundle --out $OUT`` calls :func:`install`
  (``pip install --no-index --find-links BUNDLE -r BUNDLE/requirements.txt`` with every pip configuration
  file and ``PIP_*`` variable switched off, so that the bundle is the only source) and then
  :func:`check_environment` (each requirement's installed version against its specifier, and a fresh
  interpreter importing what the parts import) before the first part starts.

:func:`link_image_standin` builds the stand-in for the image in a fresh virtual environment of the CPU
machine (``scripts/gpu_dress_rehearsal.sh``): it links in the distributions of this environment that the
image has, and nothing else, so that the bundle alone must supply the rest.

Only the standard library is imported at module level: this runs before anything is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / ".gpu_bundle"
MANIFEST = "bundle.json"
REQUIREMENTS = "requirements.txt"
CIFAR_SUBSET = "cifar10-subset.npz"
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10.npz"
#: what travels with the tree besides it, in MiB (the device tool's limit is 64 MiB with the tree)
DEFAULT_MAX_MIB = 60.0
#: the image's interpreter and platform (KINDS.md: Python 3.12.3, x86-64)
IMAGE_PYTHON = "3.12"
IMAGE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64")

#: distributions of the GPU image (KINDS.md, "Python packages already there", read 2026-11-17), by
#: canonical name
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
#: the image's versions where KINDS.md records them; a requirement they do not satisfy is carried
IMAGE_VERSIONS = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "pytorch-lightning": "2.6.6",
    "safetensors": "0.8.0", "tokenizers": "0.23.2", "torch": "2.11.0", "torchmetrics": "1.9.0",
    "torchvision": "0.26.0", "transformers": "5.17.0", "triton": "3.6.0",
}
#: carried although the image has them: their version there is not recorded and the project needs a
#: recent one (timm >= 1.0.20). pip installs them only when the image's does not satisfy the requirement.
CARRY_ANYWAY = frozenset({"timm"})

#: the modules a fresh interpreter must import before part a starts (the parts' own imports)
CHECK_IMPORTS = ("torch", "torchvision", "lightning", "lightly", "jsonargparse", "docstring_parser",
                 "typeshed_client", "timm", "mvssl_lightning", "mvssl_lightning.cli", "benchmarks.throughput",
                 "benchmarks.lightly_models", "benchmarks.pipeline", "benchmarks.quality.__main__")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


class BundleError(RuntimeError):
    """The bundle cannot be built, installed or checked (the message says why)."""


# ------------------------------------------------------------------------------------------------ here: prepare
def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``[project] dependencies`` of ``pyproject`` (the specifiers as written)."""
    import tomllib

    with open(pyproject, "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _marker_env(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def missing_distributions(requirements: Iterable[str], pythons: Sequence[str] = (IMAGE_PYTHON,),
                          image: frozenset = IMAGE_PACKAGES,
                          image_versions: Optional[dict[str, str]] = None) -> dict[str, str]:
    """``{canonical name: version}`` of what the image lacks, from ``requirements`` and the requirements of
    the distributions installed here (the version is the one installed here, which the project runs with).

    A distribution the image has is followed no further (its own requirements are the image's business),
    unless :data:`IMAGE_VERSIONS` shows it outside the specifier, or it is in :data:`CARRY_ANYWAY`.
    Markers are evaluated for Linux x86-64 CPython at each of ``pythons``; extras are followed.
    """
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.version import Version

    image_versions = IMAGE_VERSIONS if image_versions is None else image_versions
    envs = [_marker_env(p) for p in pythons]
    out: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo = [(Requirement(r), ("",)) for r in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate(dict(env, extra=x))
                                              for env in envs for x in parent_extras):
            continue
        name = canonical(req.name)
        known = image_versions.get(name)
        if name in image and name not in CARRY_ANYWAY and (known is None or req.specifier.contains(Version(known),
                                                                                                   prereleases=True)):
            continue
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as e:
            raise BundleError(f"{req} is needed but not installed here ({sys.executable}): install the project "
                              "(pip install -e .) before --prepare") from e
        if not req.specifier.contains(dist.version, prereleases=True):
            raise BundleError(f"{req} is needed but {name} {dist.version} is installed here")
        out[name] = dist.version
        todo += [(Requirement(r), ("", *req.extras)) for r in dist.requires or []]
    return dict(sorted(out.items()))


def _pip(*args: str, env: Optional[dict] = None, python: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([python or sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)


def download_wheels(dists: dict[str, str], dest: Path, pythons: Sequence[str]) -> list[Path]:
    """Wheels of ``dists`` for CPython ``pythons`` on manylinux x86-64 into ``dest``: ``pip download
    --no-deps --only-binary=:all:`` per interpreter; a distribution published as source only is built here
    with ``pip wheel --no-deps`` and kept only if the wheel is pure Python (``py3-none-any``)."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={v}" for n, v in dists.items()]
    for python in pythons:
        tags = [a for p in IMAGE_PLATFORMS for a in ("--platform", p)]
        common = ["download", "--no-deps", "--only-binary=:all:", "--python-version", python, "--implementation",
                  "cp", *tags, "-d", str(dest)]
        done = _pip(*common, *pins)
        if done.returncode == 0:
            continue
        for pin in pins:  # one at a time, to find the ones with no wheel
            if _pip(*common, pin).returncode == 0:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                built = _pip("wheel", "--no-deps", "-w", tmp, pin)
                wheels = list(Path(tmp).glob("*-py3-none-any.whl")) + list(Path(tmp).glob("*-py2.py3-none-any.whl"))
                if built.returncode != 0 or not wheels:
                    raise BundleError(f"no wheel of {pin} for CPython {python} on manylinux x86-64, and building "
                                      f"one gave no pure-Python wheel:\n{(done.stderr + built.stderr)[-2000:]}")
                for w in wheels:
                    shutil.copy2(w, dest / w.name)
    return sorted(dest.glob("*.whl"))


def subset_npz(src: Path, dest: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, int]:
    """Write a class-stratified subset of the JPEG npz ``src`` (``jpeg_*``/``offsets_*``/``y_*`` layout of the
    data contract) with ``n_train`` / ``n_test`` images to ``dest``; returns the sizes written."""
    import numpy as np

    with np.load(src) as data:
        missing = [k for k in ("jpeg_train", "offsets_train", "y_train", "jpeg_test", "offsets_test", "y_test")
                   if k not in data.files]
        if missing:
            raise BundleError(f"{src}: not a JPEG npz of the data contract (missing {', '.join(missing)})")
        arrays: dict[str, Any] = {}
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("test", n_test)):
            y = data[f"y_{split}"]
            classes = np.unique(y)
            per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
            take = [idx[: n // len(classes) + (i < n % len(classes))] for i, idx in enumerate(per_class)]
            keep = np.sort(np.concatenate(take))
            jpeg, offsets = data[f"jpeg_{split}"], data[f"offsets_{split}"]
            lengths = offsets[keep + 1] - offsets[keep]
            new_offsets = np.zeros(len(keep) + 1, dtype=offsets.dtype)
            np.cumsum(lengths, out=new_offsets[1:])
            arrays[f"jpeg_{split}"] = np.concatenate([jpeg[offsets[i]:offsets[i + 1]] for i in keep])
            arrays[f"offsets_{split}"] = new_offsets
            arrays[f"y_{split}"] = y[keep]
        if "class_names" in data.files:
            arrays["class_names"] = data["class_names"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, dest)
    return {"train": len(arrays["y_train"]), "test": len(arrays["y_test"])}


def _mib(paths: Iterable[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def prepare(dest: Path, data: Optional[Path] = None, n_train: int = 20000, n_test: int = 5000,
            max_mib: float = DEFAULT_MAX_MIB, pythons: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Build the bundle in ``dest`` (module docstring); returns its manifest (also ``dest/bundle.json``).

    The CIFAR-10 subset shrinks (train and test alike) until the folder fits ``max_mib``; no data when
    ``data`` (default: ``../shared/data/cifar10.npz``) does not exist. Raises :class:`BundleError` when the
    wheels alone exceed ``max_mib``.
    """
    start = time.monotonic()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    pythons = list(dict.fromkeys(pythons or [IMAGE_PYTHON, here]))
    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("*.whl"), dest / CIFAR_SUBSET]:
        old.unlink(missing_ok=True)
    requirements = project_requirements()
    dists = missing_distributions(requirements, pythons)
    wheels = download_wheels(dists, dest, pythons)
    (dest / REQUIREMENTS).write_text("# the project's dependencies (pyproject.toml), installed offline from this "
                                     "folder by benchmarks.gpu_check --bundle\n" + "\n".join(requirements) + "\n")
    wheel_mib = _mib(wheels)
    if wheel_mib > max_mib:
        raise BundleError(f"the wheels alone take {wheel_mib:.1f} MiB, over --max-mib {max_mib:g}")
    data = Path(data) if data is not None else SHARED_CIFAR
    subset: Optional[dict[str, int]] = None
    if data.is_file():
        for _ in range(8):
            subset = subset_npz(data, dest / CIFAR_SUBSET, n_train, n_test)
            total = wheel_mib + _mib([dest / CIFAR_SUBSET]) + 0.1
            if total <= max_mib:
                break
            shrink = 0.97 * (max_mib - wheel_mib - 0.1) / _mib([dest / CIFAR_SUBSET])
            n_train, n_test = int(n_train * shrink), max(10, int(n_test * shrink))
            if n_train < 1000:
                (dest / CIFAR_SUBSET).unlink()
                subset = None
                break
    manifest = {
        "built": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "pythons": pythons,
        "platforms": list(IMAGE_PLATFORMS), "distributions": dists, "wheels": [w.name for w in wheels],
        "wheels_mib": round(wheel_mib, 2), "data": None if subset is None else {
            "file": CIFAR_SUBSET, "source": os.path.relpath(data, ROOT), **subset,
            "mib": round(_mib([dest / CIFAR_SUBSET]), 2)},
        "requirements": requirements, "seconds": round(time.monotonic() - start, 1),
    }
    manifest["total_mib"] = round(_mib(p for p in dest.iterdir() if p.is_file()) + 0.01, 2)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------ there: install
def isolated_pip_env(base: Optional[dict] = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) without ``PIP_*`` variables and with no pip configuration file,
    so that ``--find-links BUNDLE`` is pip's only source (no index, no machine-wide ``find-links``)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def read_manifest(bundle: Path) -> dict[str, Any]:
    """``bundle/bundle.json``; :class:`BundleError` naming the folder when it is not a bundle."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"--bundle {bundle}: no {MANIFEST} there; build it with "
                          f"`python -m benchmarks.gpu_check --prepare {bundle}` on a machine with registry access")
    return json.loads(path.read_text())


def install(bundle: Path, python: Optional[str] = None, log: Optional[Path] = None) -> dict[str, Any]:
    """``pip install --no-index --find-links bundle -r bundle/requirements.txt`` into ``python``'s environment
    (default: this interpreter); what the environment already satisfies stays as it is.

    Returns ``status`` (``ok`` / ``failed``), ``seconds``, ``installed`` (``name==version`` pip reports) and
    ``log_tail``; the whole output goes to ``log``.
    """
    bundle = Path(bundle).resolve()
    read_manifest(bundle)
    start = time.monotonic()
    done = _pip("install", "--no-index", "--find-links", str(bundle), "--no-cache-dir", "--no-compile",
                "--progress-bar", "off", "-r", str(bundle / REQUIREMENTS), env=isolated_pip_env(), python=python)
    text = f"$ pip install --no-index --find-links {bundle} -r {bundle / REQUIREMENTS}\n{done.stdout}{done.stderr}"
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    installed = re.findall(r"Successfully installed (.*)", done.stdout)
    return {"status": "ok" if done.returncode == 0 else "failed", "returncode": done.returncode,
            "seconds": round(time.monotonic() - start, 1),
            "installed": installed[-1].split() if installed else [], "log_tail": text[-4000:]}


_CHECK = """
import importlib, importlib.metadata as md, json, sys
from packaging.requirements import Requirement
reqs, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
versions, problems = {}, []
for r in map(Requirement, reqs):
    try:
        v = md.version(r.name)
    except md.PackageNotFoundError:
        problems.append(f"{r}: not installed"); continue
    versions[r.name] = v
    if not r.specifier.contains(v, prereleases=True):
        problems.append(f"{r}: {v} is installed")
for m in modules:
    try:
        importlib.import_module(m)
    except Exception as e:
        problems.append(f"import {m}: {type(e).__name__}: {e}")
print("ENV-CHECK " + json.dumps({"versions": versions, "problems": problems}))
"""


def check_environment(requirements: Sequence[str], modules: Sequence[str] = CHECK_IMPORTS,
                      python: Optional[str] = None, env: Optional[dict] = None) -> dict[str, Any]:
    """In a fresh interpreter: every requirement's installed version against its specifier, then every
    module of ``modules`` imported. Returns ``status``, ``versions`` and ``problems`` (empty when ``ok``)."""
    done = subprocess.run([python or sys.executable, "-c", _CHECK, json.dumps(list(requirements)),
                           json.dumps(list(modules))], cwd=ROOT, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("ENV-CHECK "):
            result = json.loads(line[len("ENV-CHECK "):])
            return {"status": "failed" if result["problems"] else "ok", **result}
    return {"status": "failed", "versions": {}, "problems": [(done.stderr or done.stdout)[-2000:] or "no answer"]}


# ------------------------------------------------------------------------------------------------ rehearsal
def link_image_standin(site_packages: Path, image: frozenset = IMAGE_PACKAGES) -> list[str]:
    """Link into ``site_packages`` (a fresh virtual environment's) the distributions of this environment
    that the GPU image has (:data:`IMAGE_PACKAGES`) and what they require (the image, a working environment,
    has their requirements too), dist-info included, so that pip there sees them as installed; returns their
    names. Scripts and files outside ``site-packages`` are not linked."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    site_packages = Path(site_packages)
    local = {canonical(d.metadata["Name"] or ""): d for d in md.distributions()}
    wanted: set[str] = set()
    todo = [n for n in image if n in local]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for r in map(Requirement, local[name].requires or []):
            if (r.marker is None or r.marker.evaluate({"extra": ""})) and canonical(r.name) in local:
                todo.append(canonical(r.name))
    linked = []
    for name, dist in sorted(local.items()):
        if name not in wanted or not dist.files:
            continue
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, site_packages / top
            if src.exists() and not dst.exists() and not top.endswith(".pth") and top != "__pycache__":
                dst.symlink_to(src)
        linked.append(name)
    return sorted(set(linked))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.gpu_bundle standin SITE_PACKAGES``: :func:`link_image_standin` (the rehearsal)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "standin":
        print("usage: python -m benchmarks.gpu_bundle standin SITE_PACKAGES", file=sys.stderr)
        return 2
    names = link_image_standin(Path(args[1]))
    print(f"linked {len(names)} distributions of the GPU image into {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
