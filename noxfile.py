"""Every session of the monorepo, driven by one table of packages and their sibling dependencies.

nox                         the quick check of a change: lint and fabric-utils' tests (about a minute)
nox -l                      list the sessions
nox -s ci                   what CI runs: lint, dag, every package's tests, integration, build, demo
nox -s ci -- --jobs 1       the same, one session at a time
nox -s "tests(package='fabric-io')"
nox -s tests_cuda tests_xla (opt-in: run the hardware-marked tests where the hardware exists)
nox -s scale                (opt-in: the slow integration runs at world size 4-8, pytest marker `scale`)
"""

from __future__ import annotations

import ast
import functools
import glob
import os
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable

import nox
import nox.virtualenv
import tomllib

ROOT = pathlib.Path(__file__).parent
CONSTRAINTS = str(ROOT / "constraints.txt")

# name -> sibling packages it depends on (checked against each pyproject.toml by the `dag` session)
PACKAGES: dict[str, list[str]] = {
    "fabric-utils": [],
    "fabric-accelerators": ["fabric-utils"],
    "fabric-environments": ["fabric-utils"],
    "fabric-io": ["fabric-utils"],
    "fabric-precision": ["fabric-utils"],
    "fabric-strategies": [
        "fabric-utils",
        "fabric-accelerators",
        "fabric-environments",
        "fabric-io",
        "fabric-precision",
    ],
    "fabric-loggers": ["fabric-utils", "fabric-io"],
    "fabric-core": [
        "fabric-utils",
        "fabric-accelerators",
        "fabric-environments",
        "fabric-io",
        "fabric-precision",
        "fabric-strategies",
        "fabric-loggers",
    ],
    "fabric-testing": ["fabric-utils"],
}
# extra sibling packages a package's tests need (declared in its `test` extra)
TEST_SIBLINGS: dict[str, list[str]] = {name: ["fabric-testing"] for name in PACKAGES if name != "fabric-testing"}

nox.needs_version = ">=2024.4"
# `nox` alone runs the quick check of a change (about a minute); `nox -s ci` is what CI runs (all of it)
nox.options.sessions = ["lint", "tests(package='fabric-utils')"]
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True
# uv makes each venv in seconds: torch is unpacked once into uv's cache and linked into every venv after that. Where
# uv is missing, nox falls back to virtualenv + pip (slower, same result).
nox.options.default_venv_backend = "uv|virtualenv"
# uv reads no pip configuration: hand it pip's local wheel folder (where this machine keeps the torch CPU wheel)
if os.environ.get("PIP_FIND_LINKS") and not os.environ.get("UV_FIND_LINKS"):
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]


# `ci` runs a dozen venvs, each about 1 GB (linked from uv's cache where uv runs, copied with pip). CI's machine can be
# short of disk, so `ci` runs each session as a child nox process with this variable set, and the session deletes its
# venv as soon as it ends; sessions run on their own keep theirs for `-r` re-use.
DISCARD_ENV = "NOX_DISCARD_VENVS"
# `ci` sets this to a folder of its own: the bytecode of every session's site-packages, shared (see cache_bytecode)
SHARED_PYCACHE = "FABRIC_NOX_SHARED_PYCACHE"


def disposable(func: Callable[..., None]) -> Callable[..., None]:
    """Session body whose venv is deleted afterwards (pass or fail) when ``DISCARD_ENV`` is set to 1.

    Its processes get a temporary folder of their own (``TMPDIR``, a short path under the system's), deleted when the
    session ends: what tests and the tools they start leave there (torch's ``torchelastic_*`` log folders, trackers'
    files) does not pile up on the machine from run to run.
    """

    @functools.wraps(func)
    def body(session: nox.Session, **kwargs: object) -> None:
        scratch = tempfile.mkdtemp(prefix="fabric-nox-")
        session.env["TMPDIR"] = scratch
        try:
            func(session, **kwargs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            location = getattr(session.virtualenv, "location", None)
            if os.environ.get(DISCARD_ENV) == "1" and location and os.path.isdir(location):
                shutil.rmtree(location, ignore_errors=True)
                print(f"removed {location} to free disk for the next session")

    return body


def closure(names: list[str]) -> list[str]:
    """The packages in ``names`` and all their sibling dependencies, dependencies first."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        for dep in PACKAGES[name]:
            visit(dep)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def path(name: str) -> str:
    return str(ROOT / "packages" / name)


def install_torch(session: nox.Session) -> None:
    session.install("-c", CONSTRAINTS, "torch")
    cache_bytecode(session)


def cache_bytecode(session: nox.Session) -> None:
    """Let the session's Python processes keep the bytecode they compile, in a folder of its venv (gone with it).

    uv installs packages without ``.pyc`` files, and container images often set ``PYTHONDONTWRITEBYTECODE=1``: then
    every process compiles what it imports from source, and ``import torch`` costs ~2.9 s of CPU instead of ~1.3 s.
    The suites start hundreds of processes that import torch (launchers, ranks, scripts), so this halves their CPU.

    Under ``ci`` (``SHARED_PYCACHE`` set) the bytecode of the venv's site-packages goes to one folder shared by every
    session, so torch, DeepSpeed or transformers are compiled once per run rather than once per session (6-11 s of
    CPU each time). Python finds a module's bytecode under the prefix by the source's absolute path, which differs
    from venv to venv: the session's site-packages path inside the prefix is a link to the shared folder. Sharing is
    safe because a ``.pyc`` is used only while its source has the modification time and size recorded in it (uv
    links every venv's files to the same cached copy, so they match), and each is written to a temporary file and
    renamed into place.
    """
    session.env["PYTHONDONTWRITEBYTECODE"] = None  # nox drops variables set to None from what the session runs
    prefix = os.path.join(session.virtualenv.location, "pycache")
    session.env["PYTHONPYCACHEPREFIX"] = prefix
    shared = os.environ.get(SHARED_PYCACHE)
    if not shared:
        return
    for site_packages in glob.glob(os.path.join(session.virtualenv.location, "lib", "python3*", "site-packages")):
        mirror = pathlib.Path(prefix + os.path.abspath(site_packages))  # where Python looks for its bytecode
        mirror.parent.mkdir(parents=True, exist_ok=True)
        if not mirror.is_symlink():
            mirror.symlink_to(shared, target_is_directory=True)


def install_packages(
    session: nox.Session, names: list[str], *, test_of: str | None = None, editable: bool = True
) -> None:
    """Install ``names`` with their sibling closure in one pip call, so pip resolves siblings to the local copies."""
    install_torch(session)
    wanted = closure([*names, *TEST_SIBLINGS.get(test_of, [])] if test_of else names)
    args: list[str] = []
    for name in wanted:
        target = path(name) + ("[test]" if name == test_of else "")
        args += ["-e", target] if editable else [target]
    session.install("-c", CONSTRAINTS, *args)


def run_pytest(session: nox.Session, package: str, *extra: str) -> None:
    tests = ROOT / "packages" / package / "tests"
    session.run(
        "python",
        "-m",
        "pytest",
        str(tests),
        "--rootdir",
        str(ROOT),
        "-c",
        str(ROOT / "pyproject.toml"),
        *extra,
        *session.posargs,
    )


@nox.session(tags=["tests"])
@nox.parametrize("package", list(PACKAGES))
@disposable
def tests(session: nox.Session, package: str) -> None:
    """CPU tests of one package, in a venv holding only it, its declared siblings and its test extra."""
    install_packages(session, [package], test_of=package)
    if package == "fabric-environments":
        ensure_mpi(session)
    if package in ("fabric-environments", "fabric-testing"):
        ensure_slurm(session)
    run_pytest(session, package, "--hardware", "cpu")


def ensure_mpi(session: nox.Session) -> None:
    """MPI tests run for real: install Open MPI (Debian) and mpi4py when the machine lets us."""
    apt_install(session, "mpirun", "openmpi-bin", "libopenmpi-dev")
    if shutil.which("mpirun"):
        session.install("mpi4py>=3.1")


def ensure_slurm(session: nox.Session) -> None:
    """The Slurm tests start a real single-host cluster (fabric_testing.start_slurm_cluster): install Debian's
    Slurm and munge when the machine lets us; elsewhere those tests skip, saying why."""
    apt_install(session, "slurmctld", "slurm-wlm", "munge")


def apt_install(session: nox.Session, program: str, *packages: str) -> None:
    """Install Debian ``packages`` unless ``program`` is on PATH already; only as root where apt-get exists."""
    if shutil.which(program) is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-qq", external=True, silent=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", *packages, external=True, silent=True, env=env)


@nox.session(default=False)
@nox.parametrize("package", list(PACKAGES))
def tests_cuda(session: nox.Session, package: str) -> None:
    """The CUDA-marked tests of one package (needs NVIDIA GPUs)."""
    install_packages(session, [package], test_of=package)
    run_pytest(session, package, "--hardware", "cuda")


@nox.session(default=False)
@nox.parametrize("package", list(PACKAGES))
def tests_xla(session: nox.Session, package: str) -> None:
    """The XLA-marked tests of one package (needs torch_xla and a TPU/XLA device)."""
    install_packages(session, [package], test_of=package)
    session.install("torch_xla")
    run_pytest(session, package, "--hardware", "xla")


@nox.session(tags=["tests"])
@disposable
def integration(session: nox.Session) -> None:
    """Cross-package runs: parity with raw PyTorch, launch, checkpoint/resume, bad input, HF models, examples."""
    install_packages(session, ["fabric-core"], test_of="fabric-core")
    # DeepSpeed checkpoints are part of the cross-package contract (untrusted-checkpoint tests)
    session.install("-c", CONSTRAINTS, "deepspeed>=0.14")
    session.install("-c", CONSTRAINTS, "transformers")  # Hugging Face models built from tiny configs (test_hf_models)
    session.install("-c", CONSTRAINTS, "-r", str(ROOT / "examples" / "requirements.txt"))  # test_examples runs them
    # the slow world-size 4-8 runs are the `scale` session's, the fault-timing tests `integration_faults`', the
    # Slurm jobs `integration_slurm`'
    run_integration_tests(session, "-m", "not scale", ignore=(*FAULTS, *SLURM))


# Fabric's training on a real Slurm cluster: mostly waiting on Slurm's clock (it checks time limits every 30 s, and a
# requeued job waits before it starts again), so `ci` runs these beside the lanes rather than in one
SLURM = ("test_slurm_jobs.py",)


@nox.session(tags=["tests"])
@disposable
def integration_slurm(session: nox.Session) -> None:
    """Fabric on a real single-host Slurm cluster: srun training, and a warned job that is requeued and resumes.

    The resumed job must end with the weights of an uninterrupted run (tests-integration/test_slurm_jobs.py)."""
    install_packages(session, ["fabric-core"], test_of="fabric-core")
    ensure_slurm(session)
    run_integration_tests(session, "-m", "not scale", files=SLURM)


# tests of how a run ends when a rank fails or exits: which rank is named first depends on which process the
# launcher sees end first, so `ci` runs them alone, after the sessions that run side by side
FAULTS = ("test_rank_failure.py", "test_exit_endings.py")


@nox.session(tags=["tests"])
@disposable
def integration_faults(session: nox.Session) -> None:
    """Cross-package runs in which a rank fails, hangs or exits early: the run must end, name it, leave nothing."""
    install_packages(session, ["fabric-core"], test_of="fabric-core")
    run_integration_tests(session, "-m", "not scale", files=FAULTS)


@nox.session(default=False)
def scale(session: nox.Session) -> None:
    """Opt-in: the slow integration runs at world size 4-8 (pytest marker `scale`), about 7 minutes.

    Failing and lost nodes of a multi-node job, elastic restarts, FSDP hybrid and 2-D model-parallel meshes of 8
    processes, DeepSpeed ZeRO-3 consolidation (the 7 minutes were measured on a loaded 2-core machine)."""
    install_packages(session, ["fabric-core"], test_of="fabric-core")
    session.install("-c", CONSTRAINTS, "deepspeed>=0.14")
    run_integration_tests(session, "-m", "scale")


def run_integration_tests(
    session: nox.Session, *pytest_args: str, files: tuple[str, ...] = (), ignore: tuple[str, ...] = ()
) -> None:
    """pytest over tests-integration less the test files in ``ignore``, or over the test files in ``files`` only."""
    folder = ROOT / "tests-integration"
    session.run(
        "python",
        "-m",
        "pytest",
        *([str(folder / name) for name in files] or [str(folder)]),
        *(f"--ignore={folder / name}" for name in ignore),
        "--rootdir",
        str(ROOT),
        "-c",
        str(ROOT / "pyproject.toml"),
        "--hardware",
        "cpu",
        *pytest_args,
        *session.posargs,
    )


@nox.session
@disposable
def lint(session: nox.Session) -> None:
    """Lint the whole tree with ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--diff", ".")


@nox.session(default=False)
def typecheck(session: nox.Session) -> None:
    """Type-check every package's sources with mypy."""
    install_packages(session, list(PACKAGES))
    session.install("mypy>=1.10")
    session.run("mypy", *(str(ROOT / "packages" / n / "src") for n in PACKAGES))


@nox.session
@disposable
def dag(session: nox.Session) -> None:
    """Check the package graph: import-linter layers, siblings as declared, one pinned version, public imports only.

    The declared sibling dependencies must match the PACKAGES table, every package must carry the one shared version
    and pin its siblings to it, no module may import an underscore name of another package, and no module may import
    one of its own package that imports it back (.ci/import_cycles.py)."""
    session.install("import-linter>=2.0")
    check_declared_siblings()
    src_paths = os.pathsep.join(str(ROOT / "packages" / n / "src") for n in PACKAGES)
    session.run("lint-imports", "--config", str(ROOT / "pyproject.toml"), env={"PYTHONPATH": src_paths})
    check_private_imports()
    sys.path.insert(0, str(ROOT / ".ci"))
    from import_cycles import check_import_cycles  # no module imports another of its package back (a circle)

    if circles := check_import_cycles(ROOT):
        raise SystemExit("import circles inside a package:\n" + "\n".join(circles))
    print("no import circles inside any package")


def read_project(name: str) -> dict:
    with open(ROOT / "packages" / name / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def check_declared_siblings() -> None:
    versions = {name: read_project(name)["version"] for name in PACKAGES}
    if len(set(versions.values())) != 1:
        raise SystemExit(f"packages disagree on the shared version: {versions}")
    version = next(iter(versions.values()))
    for name, siblings in PACKAGES.items():
        deps = read_project(name)["dependencies"]
        declared = {}
        for dep in deps:
            match = re.match(r"^(fabric-[a-z]+)\s*==\s*(\S+)$", dep)
            if match:
                declared[match.group(1)] = match.group(2)
        if sorted(declared) != sorted(siblings):
            raise SystemExit(f"{name}: pyproject declares {sorted(declared)}, noxfile table says {sorted(siblings)}")
        wrong = {dep: v for dep, v in declared.items() if v != version}
        if wrong:
            raise SystemExit(f"{name}: sibling pins {wrong} differ from the shared version {version}")
    print(f"siblings match the table; every package is at {version} and pins its siblings to it")


def check_private_imports() -> None:
    """No module imports an underscore name (or underscore module) of another fabric package."""
    problems = []
    for name in PACKAGES:
        own = name.replace("-", "_")
        for file in (ROOT / "packages" / name / "src").rglob("*.py"):
            tree = ast.parse(file.read_text(), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fabric_"):
                    top = node.module.split(".")[0]
                    if top == own:
                        continue
                    if node.module != top:
                        problems.append(f"{file}:{node.lineno}: imports {node.module} (use {top}'s public API)")
                    problems += [
                        f"{file}:{node.lineno}: imports private {a.name} from {top}"
                        for a in node.names
                        if a.name.startswith("_")
                    ]
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        top = alias.name.split(".")[0]
                        if top.startswith("fabric_") and top != own and alias.name != top:
                            problems.append(f"{file}:{node.lineno}: imports {alias.name} (use {top}'s public API)")
    if problems:
        raise SystemExit("cross-package imports must use the top-level public API:\n" + "\n".join(problems))
    print("every cross-package import uses a top-level public name")


@nox.session
@disposable
def build(session: nox.Session) -> None:
    """A wheel per package; each installs alone (with its declared siblings' wheels) in a fresh venv and imports."""
    dist = ROOT / "dist"
    session.install("build>=1.0", "hatchling>=1.18")
    for name in PACKAGES:
        session.run(
            "python", "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), path(name), silent=True
        )
    session.notify("wheel_imports")


@nox.session(default=False)
@disposable
def wheel_imports(session: nox.Session) -> None:
    """Each built wheel, with only its siblings' wheels and declared dependencies, installs and imports; then each
    extra of fabric-core installs from the wheels and does what it promises (see ``CORE_EXTRAS``).

    One venv holds torch; after each package the venv is put back to that baseline (everything else uninstalled), so a
    dependency one package pulls in can never hide a missing declaration in the next one.
    """
    dist = ROOT / "dist"
    install_torch(session)
    baseline = installed_distributions(session)
    for package in PACKAGES:
        # wheel files by path: pip must not pick an unrelated distribution of the same name from an index
        wheels = [str(next(dist.glob(name.replace("-", "_") + "-*.whl"))) for name in closure([package])]
        session.install("-c", CONSTRAINTS, *wheels, silent=True)
        module = package.replace("-", "_")
        code = f"import {module} as m; print(m.__name__, 'imports from', m.__file__, 'with', len(m.__all__), 'names')"
        session.run("python", "-c", code)
        extra = sorted(installed_distributions(session) - baseline)
        uninstall(session, extra)
    check_core_extras(session, dist, baseline)


def check_core_extras(session: nox.Session, dist: pathlib.Path, baseline: set[str]) -> None:
    """Install ``fabric-core[extra]`` for each extra from the fresh wheels and run its checks.

    Only fabric-core's wheel is named; ``--find-links`` lets the resolver take the siblings it declares (pinned to
    this version, which no index has) from the same folder, so a missing declaration fails here. The plain install
    goes first; after each extra the venv goes back to baseline plus that plain install (reinstalling fabric-core and
    its siblings for each extra would double the time), and at the end back to the baseline.
    """
    import time

    sys.path.insert(0, str(ROOT / ".ci"))
    from core_extras import CORE_EXTRAS, EXTRA_CHECKS

    declared = set(read_project("fabric-core")["optional-dependencies"]) - {"test"}
    if declared != set(CORE_EXTRAS) - {""}:
        raise SystemExit(f"fabric-core's extras {sorted(declared)} differ from CORE_EXTRAS {sorted(CORE_EXTRAS)}")
    core = str(next(dist.glob("fabric_core-*.whl")))
    quiet = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    plain: set[str] = set()
    added: dict[str, set[str]] = {}
    for extra, checks in CORE_EXTRAS.items():
        start = time.monotonic()
        target = f"{core}[{extra}]" if extra else core
        session.install("-c", CONSTRAINTS, "--find-links", str(dist), target, silent=True)
        for check in checks:
            session.run("python", "-c", EXTRA_CHECKS[check], env=quiet)
        if extra == "all":  # [all] must install everything the other extras did (their checks ran above)
            missing = set().union(*added.values()) - installed_distributions(session)
            if missing:
                session.error(f"fabric-core[all] lacks what other extras install: {sorted(missing)}")
        if extra:
            added[extra] = installed_distributions(session) - plain
            uninstall(session, sorted(added[extra]))
        else:
            plain = installed_distributions(session)
        seconds = time.monotonic() - start
        name = f"fabric-core[{extra}]" if extra else "fabric-core"
        session.log(f"{name}: installed and checked ({', '.join(checks)}) in {seconds:.0f} s")
    uninstall(session, sorted(installed_distributions(session) - baseline))


def uninstall(session: nox.Session, names: list[str]) -> None:
    """Remove ``names`` from the session's venv, with uv where the venv is uv's (it has no pip), else with pip."""
    if not names:
        return
    if session.venv_backend == "uv":
        uv = nox.virtualenv.find_uv()[1]
        python = os.path.join(session.virtualenv.location, "bin", "python")
        session.run(uv, "pip", "uninstall", "--quiet", "--python", python, *names, silent=True, external=True)
    else:
        session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", *names, silent=True)


def installed_distributions(session: nox.Session) -> set[str]:
    code = "import importlib.metadata as m; print(' '.join({d.metadata['Name'].lower() for d in m.distributions()}))"
    output = session.run("python", "-c", code, silent=True)
    return set(str(output).split())


@nox.session
@disposable
def demo(session: nox.Session) -> None:
    """The main job: a small image-classifier training run on 2 CPU processes with DDP."""
    install_packages(session, ["fabric-core"])
    session.install("-c", CONSTRAINTS, "-r", str(ROOT / "examples" / "requirements.txt"))  # its pictures, TensorBoard
    session.run(
        "fabric",
        "run",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        str(ROOT / "examples" / "image_classifier.py"),
        *session.posargs,
    )


@nox.session(default=False)
def examples(session: nox.Session) -> None:
    """Every example, on small settings, with 2 CPU processes."""
    install_packages(session, ["fabric-core", "fabric-loggers"])
    session.install("-c", CONSTRAINTS, "-r", str(ROOT / "examples" / "requirements.txt"))  # matplotlib, tensorboard
    for script in sorted((ROOT / "examples").glob("[!_]*.py")):  # not the shared examples/_pictures.py
        session.run("fabric", "run", "--accelerator", "cpu", "--devices", "2", str(script), "--fast")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Overhead and parity benchmarks against raw PyTorch and the peers (see benchmarks/README.md)."""
    install_packages(session, ["fabric-core"])
    # Lightning Fabric and HF Accelerate, for the peer columns: this environment only, on the pinned torch
    session.install("-c", CONSTRAINTS, "-r", str(ROOT / "benchmarks" / "requirements-peers.txt"))
    session.run("python", str(ROOT / "benchmarks" / "run.py"), *session.posargs)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the user guide and the CLI and API references (warnings are errors), then check every page in Chromium.

    docs/check_pages.py opens each page at 1280 and 390 px and fails on cut-off code, tables or a broken layout; it
    needs the system's Chromium (Debian: apt-get install chromium) and writes screenshots to docs/_build/screenshots.
    """
    install_packages(session, [*PACKAGES])
    session.install("sphinx>=7", "myst-parser>=2", "furo>=2024.8.6", "sphinx-click>=6", "playwright>=1.40")
    build = str(ROOT / "docs" / "_build")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", str(ROOT / "docs"), build)
    session.run("python", str(ROOT / "docs" / "check_pages.py"), build, *session.posargs)


# `ci`'s sessions, longest first (the lanes take them in this order)
CI_SESSIONS = [
    "integration",
    "tests(package='fabric-strategies')",
    "tests(package='fabric-core')",
    "tests(package='fabric-loggers')",
    "build",
    "demo",
]
# beside those, outside the lanes: sessions that mostly wait
CI_BESIDE = ["integration_slurm"]
# then integration_faults, beside only these light sessions (one lane for it, one for them: together about as long)
CI_LAST = [
    "integration_faults",
    "tests(package='fabric-io')",
    "tests(package='fabric-testing')",
    "tests(package='fabric-environments')",
    "tests(package='fabric-precision')",
    "tests(package='fabric-accelerators')",
    "tests(package='fabric-utils')",
    "lint",
    "dag",
]


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """What CI runs: lint, dag, every package's CPU tests, integration, build and the demo.

    Each session runs as its own nox process, two at a time (`-- --jobs N`: N; each session's log is printed whole
    when it ends), longest first: the suites spend much of their time waiting on processes they started, so two
    lanes use the second core; `integration_slurm`, which mostly waits on Slurm, runs beside the lanes from the
    start. `integration_faults` runs last, beside light sessions only: under the load of two
    heavy lanes a launcher can see a failing run's processes end in another order than they failed, and those tests
    check which rank is named. The Debian packages some sessions need are installed first, once. Each session's venv
    is deleted when it ends; the bytecode of installed packages is shared by all sessions (see cache_bytecode).
    """
    jobs = ci_jobs(session.posargs)
    free_gb = shutil.disk_usage(ROOT).free / 2**30
    print(f"free disk at {ROOT}: {free_gb:.1f} GiB (each session needs about 1.5 GiB while it runs); {jobs} lane(s)")
    # dpkg takes one installer at a time: install for every session before the lanes start
    apt_install(session, "mpirun", "openmpi-bin", "libopenmpi-dev")
    ensure_slurm(session)
    sys.path.insert(0, str(ROOT / ".ci"))
    from lanes import host_speed, run_in_lanes

    before = host_speed()
    shared_pycache = tempfile.mkdtemp(prefix="fabric-ci-pycache-")
    env = {DISCARD_ENV: "1", SHARED_PYCACHE: shared_pycache}
    try:
        outcomes = run_in_lanes(CI_SESSIONS, jobs=jobs, noxfile=ROOT / "noxfile.py", env=env, beside=CI_BESIDE)
        outcomes += run_in_lanes(CI_LAST, jobs=min(jobs, 2), noxfile=ROOT / "noxfile.py", env=env)
    finally:
        shutil.rmtree(shared_pycache, ignore_errors=True)
    for outcome in sorted(outcomes, key=lambda o: -o.seconds):
        state = "ok    " if outcome.returncode == 0 else "FAILED"
        print(f"{outcome.seconds:6.0f} s {outcome.cpu_seconds:6.0f} s CPU  {state}  {outcome.name}")
    # the same loop before and after: compare runs' times only where the host ran it at about the same speed
    print(f"host speed: a fixed Python loop took {before:.2f} s of CPU before the sessions, {host_speed():.2f} s after")
    failed = [outcome.name for outcome in outcomes if outcome.returncode != 0]
    if failed:
        session.error(f"failed sessions: {', '.join(failed)}")


def ci_jobs(posargs: list[str]) -> int:
    """``--jobs N`` from ``nox -s ci -- --jobs N`` (default 2)."""
    if not posargs:
        return 2
    if len(posargs) == 2 and posargs[0] == "--jobs" and posargs[1].isdigit() and int(posargs[1]) >= 1:
        return int(posargs[1])
    raise SystemExit(f"nox -s ci takes only `-- --jobs N` (N >= 1), got {posargs}")


if __name__ == "__main__":
    sys.exit("run with nox")
