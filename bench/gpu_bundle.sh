#!/usr/bin/env bash
# The wheels bench/gpu_label.sh needs on a GPU machine that has torch and torchvision but no
# segmentation-models-pytorch (smp) and no network: smp 0.6.0, what importing it needs that torch
# does not bring (timm, huggingface_hub, safetensors, tqdm, and theirs), and segray itself as a wheel.
# Run it where PyPI is reachable; the GPU machine then unpacks only the wheels whose modules it lacks.
#
#   bash bench/gpu_bundle.sh [DIR]        # default DIR: bench/gpu-bundle (git ignores it)
#
# Environment: PYTHON_VERSION (default 3.12) and PLATFORM (default manylinux2014_x86_64) name the GPU
# machine's interpreter and platform for the compiled wheels (safetensors, pyyaml, hf-xet).
# The dependency walk starts at smp and skips torch, torchvision, numpy, pillow and torch's own
# dependencies (any machine with torch has them). Writes DIR/BUNDLE.txt (name, size, sha256).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$HERE/bench/gpu-bundle}
PY=${PYTHON:-$HERE/.venv/bin/python}
export BUNDLE_PYTHON_VERSION=${PYTHON_VERSION:-3.12}
export BUNDLE_PLATFORM=${PLATFORM:-manylinux2014_x86_64}
if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -f "$DIR/BUNDLE.txt" ]; then
  echo "$DIR holds files that are not a bundle: name an empty or new folder" >&2
  exit 2
fi
rm -rf "$DIR"
mkdir -p "$DIR"

"$PY" - "$DIR" <<'EOF'
import subprocess, sys, zipfile, os
from pathlib import Path
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

out = Path(sys.argv[1])
pyver = os.environ["BUNDLE_PYTHON_VERSION"]
platform = os.environ["BUNDLE_PLATFORM"]
# Present wherever torch and torchvision are installed: never bundled.
WITH_TORCH = {
    "torch", "torchvision", "numpy", "pillow", "filelock", "fsspec", "typing-extensions", "sympy",
    "mpmath", "networkx", "jinja2", "markupsafe", "setuptools", "triton",
}
env = default_environment()
env.update(python_version=pyver, python_full_version=f"{pyver}.0", sys_platform="linux",
           platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
           platform_python_implementation="CPython", os_name="posix")
todo, seen = ["segmentation-models-pytorch==0.6.0"], set()
while todo:
    req = Requirement(todo.pop(0))
    name = canonicalize_name(req.name)
    if name in seen or name in WITH_TORCH or name.startswith("nvidia-"):
        continue
    seen.add(name)
    before = set(out.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", pyver,
         "--implementation", "cp", "--platform", platform, "--platform", "manylinux_2_17_x86_64",
         "--platform", "manylinux_2_28_x86_64", "-d", str(out), f"{req.name}{req.specifier}"],
        check=True,
    )
    new = set(out.glob("*.whl")) - before
    for whl in new:
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if line.startswith("Requires-Dist:"):
                    dep = Requirement(line.split(":", 1)[1].strip())
                    if dep.marker is None or dep.marker.evaluate({**env, "extra": ""}):
                        todo.append(str(dep).split(";")[0])
EOF

# segray from this checkout, built in a copy so that the working tree gets no build/ folder.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp -r "$HERE/pyproject.toml" "$HERE/README.md" "$HERE/segray" "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$SRC" >/dev/null

(cd "$DIR" && for f in *.whl; do printf '%s\t%s\t%s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-64)"; done) \
  >"$DIR/BUNDLE.txt"
cat "$DIR/BUNDLE.txt"
TOTAL=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "bundle: $DIR, $(ls "$DIR"/*.whl | wc -l) wheels, $((TOTAL / 1024)) KiB"
if [ "$TOTAL" -gt $((60 * 1024 * 1024)) ]; then
  echo "the bundle is over 60 MiB: it would not travel with a 64 MiB working tree" >&2
  exit 1
fi
