"""The image loads what it ships: every system library that importing the service's modules loads
here is installed by the Dockerfile's runtime stage, or comes with its base (python:3.11-slim).

The wheels bundle their own libraries (Pillow's `pillow.libs`, psycopg's `psycopg_binary.libs`,
neonize's Go library, imageio-ffmpeg's static ffmpeg), but python-magic, which neonize imports,
loads the system's libmagic by ctypes: an image without it starts no WhatsApp session. The
modules are imported in a subprocess (neonize starts Go's runtime, whose panics end the process
that loads it: tests/test_whatsapp.py), which reports the shared objects mapped in its memory;
each one under /lib or /usr/lib is mapped to its Debian package (`dpkg-query -S`). `make
image-check` (scripts/image_check.sh) builds the image itself and loads the same modules in it.
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

#: Debian packages python:3.11-slim already holds, so the Dockerfile need not install them.
#: Its base, debian:bookworm-slim, is Debian's "minbase" set: the first group is every library
#: package of `debootstrap --variant=minbase bookworm` (checked by running it). docker-library's
#: Dockerfile for 3.11/slim-bookworm then installs ca-certificates (which needs openssl, hence
#: libssl3), netbase and tzdata, builds Python, and keeps (apt-mark manual) the packages of every
#: library that its /usr/local python and lib-dynload modules link: the second group (from its
#: build dependencies libssl-dev, libsqlite3-dev, libncursesw5-dev, libreadline-dev, libgdbm-dev,
#: libdb-dev, uuid-dev, libffi-dev, liblzma-dev, libbz2-dev, zlib1g-dev). libexpat1 is left out
#: on purpose: the 3.11 image builds pyexpat with Python's bundled expat, so it may be absent.
BASE_IMAGE_PACKAGES = frozenset({
    # debian:bookworm-slim (minbase): glibc, the compiler's runtimes, compression, and the rest.
    "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "liblzma5", "libbz2-1.0", "libzstd1", "liblz4-1",
    "libffi8", "libuuid1", "libtinfo6", "libcrypt1", "libdb5.3", "libselinux1", "libpcre2-8-0",
    "libacl1", "libattr1", "libblkid1", "libmount1", "libsmartcols1", "libcap2", "libcap-ng0",
    "libaudit1", "libgcrypt20", "libgpg-error0", "libgnutls30", "libgmp10", "libhogweed6",
    "libnettle8", "libidn2-0", "libunistring2", "libp11-kit0", "libtasn1-6", "libxxhash0", "libmd0",
    "libsystemd0", "libudev1", "libseccomp2",
    # python:3.11-slim's own: what its Python links (kept by its Dockerfile's apt-mark manual).
    "libssl3", "libsqlite3-0", "libncursesw6", "libreadline8", "libgdbm6", "libgdbm-compat4",
})

#: Run in a child process: import every module of the service (the API's and the worker's, with
#: neonize's), the native modules uvicorn picks up when it runs (uvloop, httptools), python-magic,
#: and report which shared objects are mapped, with where python-magic finds libmagic.
PROBE = """
import ctypes.util, importlib, json, pkgutil, sys, sysconfig
import service, workers
names = [m.name for pkg in (service, workers) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in [*names, "uvloop", "httptools", "magic", "neonize"]:
    importlib.import_module(name)
maps = set()
with open("/proc/self/maps") as f:
    for line in f:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and ".so" in fields[5]:
            maps.add(fields[5].strip())
print(json.dumps({"maps": sorted(maps), "magic": ctypes.util.find_library("magic"),
                  "stdlib": sysconfig.get_path("platstdlib")}))
"""


@functools.cache
def loaded_libraries() -> tuple[list[str], str | None]:
    """(The system shared objects the service's modules load, python-magic's libmagic name)."""
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing the service's modules failed:\n{result.stderr[-4000:]}"
    found = json.loads(result.stdout.splitlines()[-1])
    system = []
    for path in found["maps"]:
        resolved = str(Path(path).resolve())
        if not resolved.startswith(("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")):
            continue  # the wheels' own (site-packages, *.libs) and the interpreter's (/usr/local in the image)
        if "-packages/" in resolved or resolved.startswith(found["stdlib"]) or Path(resolved).name.startswith(
                "libpython"):
            continue  # a Debian Python's own modules: the image's Python is its own, under /usr/local
        system.append(resolved)
    return system, found["magic"]


def package_of(path: str) -> str | None:
    """The Debian package that holds `path` (merged /usr: dpkg may know it as /lib/…)."""
    candidates = [path]
    if path.startswith("/usr/lib"):
        candidates.append(path.removeprefix("/usr"))
    elif path.startswith("/lib"):
        candidates.append("/usr" + path)
    for candidate in candidates:
        result = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            if line.startswith("diversion ") or ": " not in line:
                continue
            return line.split(": ", 1)[0].split(",")[0].strip().split(":")[0]
    return None


def runtime_stage(dockerfile: str) -> str:
    """The last stage (the image itself), continuation lines joined."""
    joined = dockerfile.replace("\\\n", " ")
    stages = [i for i, line in enumerate(joined.splitlines()) if line.strip().upper().startswith("FROM ")]
    assert stages, "a FROM line"
    return "\n".join(joined.splitlines()[stages[-1]:])


def apt_installed(stage: str) -> tuple[set[str], list[str]]:
    """The packages the stage's RUN lines `apt-get install`, and those commands."""
    packages: set[str] = set()
    commands = []
    for line in stage.splitlines():
        if not line.strip().upper().startswith("RUN "):
            continue
        for command in line.strip()[4:].replace("&&", ";").split(";"):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                commands.append(command.strip())
                packages.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
    return packages, commands


def test_the_probe_sees_the_libraries_it_must() -> None:
    """libmagic is loaded here (else the check below would miss it), through python-magic."""
    if sys.platform != "linux":
        pytest.skip("reads /proc/<pid>/maps")
    system, magic = loaded_libraries()
    assert magic is not None, "python-magic finds no libmagic on this machine: install libmagic1"
    assert any(Path(path).name.startswith("libmagic.so") for path in system), system
    assert any(Path(path).name.startswith("libc.so") for path in system), system


def test_the_runtime_stage_installs_every_system_library_the_service_loads() -> None:
    if sys.platform != "linux" or shutil.which("dpkg-query") is None:
        pytest.skip("needs Debian's dpkg to name each library's package")
    system, _ = loaded_libraries()
    owners = {path: package_of(path) for path in system}
    unowned = sorted(path for path, package in owners.items() if package is None)
    assert not unowned, f"no Debian package holds these: the image cannot be told to install them: {unowned}"
    needed = {package for package in owners.values() if package is not None}

    installed, commands = apt_installed(runtime_stage((ROOT / "Dockerfile").read_text()))
    missing = sorted(needed - installed - BASE_IMAGE_PACKAGES)
    assert not missing, (
        f"the Dockerfile's runtime stage must `apt-get install` {missing} (loaded by "
        f"{sorted(path for path, package in owners.items() if package in missing)}); it installs {sorted(installed)}"
    )
    for command in commands:  # and keeps the image small
        assert "--no-install-recommends" in command, command
    stage = runtime_stage((ROOT / "Dockerfile").read_text())
    assert "rm -rf /var/lib/apt/lists/*" in stage, "the runtime stage leaves apt's lists behind"
