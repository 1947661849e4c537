"""The policy travels with the notebook: its `metadata.awf` decides its kernel's
egress under nbval, Jupyter Server's JPY_SESSION_NAME, nbclient and papermill;
the launcher's AWF_POLICY wins over the file; the admin's settings bound both;
bad metadata stops the kernel before anything exists.

Reachability is judged by the test internet's own logs (what arrived at the
web servers and the DNS server since a `mark()`), not only by the errors the
kernel saw.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_core.paths import jupyter_data_dir
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from awf_kernel import kernelspec, naming, trust
from awf_kernel.errors import CeilingError, PolicyError
from awf_kernel.sandbox import docker as sandbox
from tests.integration.conftest import Kernel

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
EXAMPLES = ("demo.ipynb", "reaches_only_declared.ipynb", "shows_blocked_request.ipynb",
            "preset_like_allowlist.ipynb")
KERNELSPEC = {"name": "awf-python", "display_name": "Python (AWF sandboxed)", "language": "python"}


# --- helpers ---------------------------------------------------------------------------------

def write_notebook(path: pathlib.Path, awf, *sources: str, **metadata) -> pathlib.Path:
    """A notebook with the awf-python kernelspec and (unless awf is None) `metadata.awf`."""
    meta = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}, **metadata}
    if awf is not None:
        meta["awf"] = awf
    nb = new_notebook(cells=[new_markdown_cell(f"# {path.stem}")] + [new_code_cell(s) for s in sources],
                      metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    trust.trust(str(path))  # the user's own notebook (a downloaded one would not be signed)
    return path


@pytest.fixture(autouse=True)
def own_notary(tmp_path, monkeypatch):
    """Notebook trust lives in the user's Jupyter data folder: the test's own."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))


def fetch_cell(url: str, expect: int) -> str:
    """A notebook cell that fetches `url` and asserts the status (raise_for_status
    names the URL and the sandbox's 403 when an undeclared host is refused)."""
    check = "r.raise_for_status()" if expect == 200 else f"assert r.status_code == {expect}, r.status_code"
    return (f"import requests\n"
            f"r = requests.get({url!r}, timeout=10)\n"
            f"print({url!r}, '->', r.status_code)\n"
            f"{check}")


def launcher_env(spec_dir, **extra: str) -> dict[str, str]:
    """The test process's environment with the test kernel spec first on JUPYTER_PATH
    and no policy or notebook identity of its own."""
    env = {**os.environ, "JUPYTER_PATH": str(spec_dir.parent), **extra}
    for key in ("AWF_POLICY", "JPY_SESSION_NAME"):
        if key not in extra:
            env.pop(key, None)
    return env


def run_nbval(spec_dir, *args: str, cwd=REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=str(cwd), env=launcher_env(spec_dir), capture_output=True, text=True,
                          timeout=timeout)
    proc.output = proc.stdout + proc.stderr
    return proc


def plain(text: str) -> str:
    """Text without the ANSI colours of IPython tracebacks."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def requests_to(testnet, name: str, since) -> list[tuple[str, str]]:
    """(Host header, path) of each HTTP request a testnet web server answered since the mark."""
    return [((e.get("host") or "").split(":")[0], e.get("path"))
            for e in testnet.web_hits(name, since=since) if e["event"] == "request"]


def queried(testnet, since) -> set[str]:
    return {q["name"] for q in testnet.dns_queries(since=since) if q["event"] == "query"}


def get(k, url: str):
    """Status code of a GET from inside the kernel, or the exception's name."""
    return k.probe(f"""
        import json, requests, urllib3
        urllib3.disable_warnings()
        try:
            print(json.dumps(requests.get({url!r}, timeout=10, verify=False).status_code))
        except requests.exceptions.RequestException as e:
            print(json.dumps(type(e).__name__))
    """)


def user_folder(path: pathlib.Path) -> pathlib.Path:
    """A folder owned by an ordinary user (as root, the kernel would run as its owner)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(path, 1000, 1000)
    return path


def audit_policies(notebook: pathlib.Path, since: float) -> list[dict]:
    """The effective policies the provisioner recorded for kernels started for `notebook` since `since`."""
    base = pathlib.Path(jupyter_data_dir()) / "awf-kernel" / "audit"
    out = []
    for f in base.glob("*/policy.json"):
        try:
            meta = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("notebook") == str(notebook) and meta.get("started", 0) >= since:
            out.append(meta["policy"])
    return out


def nothing_left(docker_client, km: KernelManager) -> None:
    assert km.kernel_id, "the manager never got as far as a kernel id"
    sandbox.wait_for_removals()  # pods go in the background once their kernels ended
    assert docker_client.containers.list(all=True, filters=naming.kernel_filter(km.kernel_id)) == []
    assert docker_client.networks.list(filters=naming.kernel_filter(km.kernel_id)) == []
    assert not km.connection_file or not os.path.exists(km.connection_file)
    assert not (pathlib.Path(jupyter_data_dir()) / "awf-kernel" / "audit" / km.kernel_id).exists()


@pytest.fixture
def admin_spec(spec_dir):
    """Factory: a kernel spec with admin settings (on the test internet like awf-python); removed afterwards."""
    made = []

    def install(**settings) -> str:
        with open(spec_dir / kernelspec.KERNEL_NAME / "kernel.json") as f:
            base = json.load(f)["metadata"]["kernel_provisioner"]["config"]
        name = f"awf-python-admin-{uuid.uuid4().hex[:6]}"
        kernelspec.install(prefix=str(spec_dir.parent.parent.parent), name=name, settings={**base, **settings})
        made.append(spec_dir / name)
        return name

    yield install
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def manager(spec_dir, name: str = kernelspec.KERNEL_NAME) -> KernelManager:
    return KernelManager(kernel_name=name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]))


def refused(km: KernelManager, error: type[Exception], **start_kwargs) -> Exception:
    """The error that stopped the kernel's start; a kernel that started anyway is shut down, then the test fails."""
    try:
        km.start_kernel(**start_kwargs)
    except error as exc:
        return exc
    km.shutdown_kernel(now=True)
    pytest.fail(f"the kernel started; expected {error.__name__}")


@contextmanager
def running(spec_dir, name: str, **start_kwargs):
    """A kernel of the named spec, shut down (or at least cleaned up) afterwards."""
    km = manager(spec_dir, name)
    km.start_kernel(**start_kwargs)
    try:
        k = Kernel(km)
    except BaseException:
        km.shutdown_kernel(now=True)
        raise
    try:
        yield k
    finally:
        try:
            k.shutdown()
        except Exception:  # noqa: BLE001 - a dead kernel still gets its pod removed
            km.cleanup_resources()


# --- nbval ---------------------------------------------------------------------------------

def test_example_notebooks_pass_under_nbval(spec_dir, testnet):
    for name in EXAMPLES:
        nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "awf-python" and "awf" in nb.metadata, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} stores outputs"
    mark, started = testnet.mark(), time.time()
    proc = run_nbval(spec_dir, "--nbval-lax", "--nbval-kernel-name", "awf-python", "notebooks/")
    assert proc.returncode == 0, proc.output
    assert " failed" not in proc.output and " passed" in proc.output
    # what the notebooks say they reached did arrive; what they say was refused did not
    allowed = {host for host, _ in requests_to(testnet, "allowed.test", mark)}
    assert {"allowed.test", "api.allowed.test", "cdn.eu.allowed.test"} <= allowed
    assert not {h for h in allowed if h.endswith("secret.allowed.test")}
    assert requests_to(testnet, "other.test", mark) == []
    assert requests_to(testnet, "blocked.test", mark) == []
    names = queried(testnet, mark)
    assert not {n for n in names if n in ("other.test", "blocked.test") or n.endswith("secret.allowed.test")}
    # each example ran under exactly its own metadata
    for name in EXAMPLES:
        awf = nbformat.read(str(NOTEBOOKS / name), as_version=4).metadata.awf
        recorded = audit_policies(NOTEBOOKS / name, since=started)
        assert len(recorded) == 1, f"{len(recorded)} kernels were started for {name}"
        assert recorded[0]["allow_domains"] == awf["allow_domains"]
        assert recorded[0]["block_domains"] == awf.get("block_domains", [])


def test_undeclared_host_fails_under_nbval(spec_dir, testnet, tmp_path):
    """A notebook that needs more than it declares fails CI, and says which host."""
    nb = write_notebook(tmp_path / "needs_more.ipynb", {"allow_domains": ["other.test"]},
                        fetch_cell("http://other.test/declared", 200),
                        fetch_cell("http://allowed.test/undeclared", 200))
    mark = testnet.mark()
    proc = run_nbval(spec_dir, "--nbval-lax", "--nbval-kernel-name", "awf-python", str(nb), cwd=tmp_path)
    assert proc.returncode == 1, proc.output
    assert "1 failed" in proc.output and "1 passed" in proc.output, proc.output
    # the failure names the host and the sandbox's answer (not only the cell's source)
    assert "HTTPError: 403 Client Error: Forbidden for url: http://allowed.test/undeclared" in plain(proc.output)
    assert requests_to(testnet, "other.test", mark) == [("other.test", "/declared")]  # the kernel worked
    assert requests_to(testnet, "allowed.test", mark) == []  # and the undeclared host saw nothing
    assert "allowed.test" not in queried(testnet, mark)


def test_current_env_is_refused_for_sandboxed_notebooks(spec_dir, testnet):
    mark = testnet.mark()
    proc = run_nbval(spec_dir, "--nbval-lax", "--nbval-current-env", "--nbval-kernel-name", "awf-python",
                     "notebooks/demo.ipynb")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.output
    assert "--nbval-current-env" in proc.output and "outside the sandbox" in proc.output
    # without --nbval-kernel-name too: the notebook's metadata asks for the sandbox
    proc = run_nbval(spec_dir, "--nbval-lax", "--nbval-current-env", "notebooks/demo.ipynb")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.output
    assert "demo.ipynb" in proc.output and "unsandboxed" in proc.output
    assert requests_to(testnet, "allowed.test", mark) == []  # no cell ran anywhere


def test_each_notebook_gets_exactly_its_own_policy(spec_dir, testnet, tmp_path):
    a = write_notebook(tmp_path / "a.ipynb", {"allow_domains": ["allowed.test"]},
                       fetch_cell("http://allowed.test/from-a", 200),
                       fetch_cell("http://other.test/from-a", 403))
    b = write_notebook(tmp_path / "b.ipynb", {"allow_domains": ["other.test"]},
                       fetch_cell("http://other.test/from-b", 200),
                       fetch_cell("http://allowed.test/from-b", 403))
    mark, started = testnet.mark(), time.time()
    proc = run_nbval(spec_dir, "--nbval-lax", "--nbval-kernel-name", "awf-python", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    assert "4 passed" in proc.output, proc.output
    assert requests_to(testnet, "allowed.test", mark) == [("allowed.test", "/from-a")]
    assert requests_to(testnet, "other.test", mark) == [("other.test", "/from-b")]
    assert [p["allow_domains"] for p in audit_policies(a, since=started)] == [["allowed.test"]]
    assert [p["allow_domains"] for p in audit_policies(b, since=started)] == [["other.test"]]


# --- the notebook file, named by JPY_SESSION_NAME ---------------------------------------------

def test_session_notebook_metadata_applies_and_restart_rereads_it(start_kernel, testnet, tmp_path):
    folder = user_folder(tmp_path / "project")
    nb = write_notebook(folder / "analysis.ipynb", {"allow_domains": ["other.test"]})
    k = start_kernel(env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": str(nb)}, cwd=str(folder))
    mark = testnet.mark()
    assert get(k, "http://other.test/first") == 200
    assert get(k, "http://allowed.test/first") == 403
    assert requests_to(testnet, "other.test", mark) == [("other.test", "/first")]
    assert requests_to(testnet, "allowed.test", mark) == []

    # edit the metadata on disk (as JupyterLab's save does), restart: the new policy applies
    doc = nbformat.read(str(nb), as_version=4)
    doc.metadata.awf = {"allow_domains": ["allowed.test"]}
    nbformat.write(doc, str(nb))
    trust.trust(str(nb))  # JupyterLab signs what the user saves
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=120)
    mark = testnet.mark()
    assert get(k, "http://allowed.test/second") == 200
    assert get(k, "http://other.test/second") == 403
    assert requests_to(testnet, "allowed.test", mark) == [("allowed.test", "/second")]
    assert requests_to(testnet, "other.test", mark) == []
    assert "other.test" not in queried(testnet, mark)  # the new pod's resolver does not forward it


def test_kernel_cannot_write_its_own_notebook(start_kernel, tmp_path):
    """Otherwise a cell could widen its own metadata.awf for the next restart."""
    folder = user_folder(tmp_path / "project")
    nb = write_notebook(folder / "analysis.ipynb", {"allow_domains": ["other.test"]})
    if os.getuid() == 0:
        os.chown(nb, 1000, 1000)  # only the mount, not file permissions, may stop the write
    before = nb.read_bytes()
    k = start_kernel(env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": str(nb)}, cwd=str(folder))
    res = k.probe(f"""
        import errno, json, os
        path = {str(nb)!r}
        wide = open(path).read().replace('"other.test"', '"*.com"')
        out = {{}}
        def attempt(name, fn):
            try:
                fn()
                out[name] = "ok"
            except OSError as e:
                out[name] = errno.errorcode.get(e.errno, str(e.errno))
        attempt("write", lambda: open(path, "w").write(wide))
        attempt("append", lambda: open(path, "a").write(" "))
        def replace():
            with open(path + ".tmp", "w") as f:
                f.write(wide)
            os.replace(path + ".tmp", path)
        attempt("replace", replace)
        attempt("unlink", lambda: os.unlink(path))
        attempt("sibling", lambda: open(os.path.join(os.path.dirname(path), "notes.txt"), "w").write("hi"))
        print(json.dumps(out))
    """)
    assert res["sibling"] == "ok"  # the folder itself is writable: the protection is the read-only mount
    assert res["write"] == "EROFS" and res["append"] == "EROFS"
    assert res["replace"] != "ok" and res["unlink"] != "ok"
    assert nb.read_bytes() == before


def test_awf_policy_wins_over_the_notebook_file(start_kernel, testnet, tmp_path):
    folder = user_folder(tmp_path / "project")
    nb = write_notebook(folder / "analysis.ipynb", {"allow_domains": ["other.test"]})
    k = start_kernel(policy={"allow_domains": ["allowed.test"]},
                     env={"LANG": "C.UTF-8", "JPY_SESSION_NAME": str(nb)}, cwd=str(folder))
    mark = testnet.mark()
    assert get(k, "http://allowed.test/env") == 200
    assert get(k, "http://other.test/file") == 403
    assert requests_to(testnet, "allowed.test", mark) == [("allowed.test", "/env")]
    assert requests_to(testnet, "other.test", mark) == []


def test_block_list_denial_names_the_host(start_kernel, testnet):
    """A host carved out by block_domains is refused with a 403 that, like any
    other denial, names the host in X-AWF-Blocked-Host."""
    k = start_kernel(policy={"allow_domains": [".allowed.test"], "block_domains": ["secret.allowed.test"]})
    mark = testnet.mark()
    res = k.probe("""
        import json, requests
        r = requests.get("http://secret.allowed.test/carved-out", timeout=10)
        print(json.dumps({"status": r.status_code, "headers": dict(r.headers)}))
    """)
    assert res["status"] == 403
    assert requests_to(testnet, "allowed.test", mark) == []
    assert res["headers"]["X-AWF-Blocked-Host"] == "secret.allowed.test"
    assert "block" in res["headers"]["X-AWF-Fix"]  # the fix for a block list, not "add to allow_domains"
    assert res["headers"]["X-Squid-Error"].startswith("ERR_AWF_BLOCKED")


def test_raw_ip_and_port_denials_name_the_fix(start_kernel, testnet):
    k = start_kernel(policy={"allow_domains": ["allowed.test"]})
    res = k.probe(f"""
        import json, requests
        out = {{}}
        for url in ("http://{testnet.ips['allowed.test']}/raw", "http://allowed.test:8080/port"):
            r = requests.get(url, timeout=10)
            out[url] = [r.status_code, r.headers.get("X-AWF-Fix", "")]
        print(json.dumps(out))
    """)
    for url, (status, fix) in res.items():
        assert status == 403 and "ports 80 and 443" in fix, (url, status, fix)


# --- admin bounds ------------------------------------------------------------------------------

def test_ceiling_refuses_a_notebook_asking_for_more(admin_spec, spec_dir, docker_client, testnet, tmp_path):
    name = admin_spec(domain_ceiling=["other.test"])
    nb = write_notebook(user_folder(tmp_path / "p") / "wants.ipynb", {"allow_domains": ["allowed.test"]})
    km = manager(spec_dir, name)
    mark = testnet.mark()
    msg = str(refused(km, CeilingError, env={"JPY_SESSION_NAME": str(nb)}, cwd=str(nb.parent)))
    assert "'allowed.test'" in msg and "domain_ceiling" in msg and str(nb) in msg
    nothing_left(docker_client, km)
    assert requests_to(testnet, "allowed.test", mark) == []


def test_ceiling_admits_a_notebook_within_it(admin_spec, spec_dir, testnet, tmp_path):
    """The same ceiling lets a notebook have what it covers (the refusal above is not a blanket one)."""
    name = admin_spec(domain_ceiling=["other.test", "*.allowed.test"])
    folder = user_folder(tmp_path / "p")
    nb = write_notebook(folder / "modest.ipynb", {"allow_domains": ["api.allowed.test"]})
    with running(spec_dir, name, env={"JPY_SESSION_NAME": str(nb)}, cwd=str(folder)) as k:
        mark = testnet.mark()
        assert get(k, "http://api.allowed.test/in") == 200
        assert get(k, "http://other.test/ceiling-only") == 403  # the ceiling bounds, it does not grant
        assert requests_to(testnet, "allowed.test", mark) == [("api.allowed.test", "/in")]
        assert requests_to(testnet, "other.test", mark) == []


def test_admin_block_beats_notebook_allow(admin_spec, spec_dir, testnet, tmp_path):
    name = admin_spec(block_domains=["api.allowed.test"])
    folder = user_folder(tmp_path / "p")
    nb = write_notebook(folder / "wide.ipynb", {"allow_domains": [".allowed.test"]})
    with running(spec_dir, name, env={"JPY_SESSION_NAME": str(nb)}, cwd=str(folder)) as k:
        mark = testnet.mark()
        assert get(k, "http://api.allowed.test/x") == 403
        assert get(k, "https://api.allowed.test/x") == "ProxyError"
        assert get(k, "http://www.allowed.test/y") == 200
        assert requests_to(testnet, "allowed.test", mark) == [("www.allowed.test", "/y")]
        assert [e for e in testnet.web_hits("allowed.test", since=mark) if e.get("sni") == "api.allowed.test"] == []
        assert "api.allowed.test" not in queried(testnet, mark)


def test_admin_allow_applies_without_any_notebook(admin_spec, spec_dir, testnet):
    name = admin_spec(allow_domains=["other.test"])
    with running(spec_dir, name, env={"LANG": "C.UTF-8"}) as k:
        mark = testnet.mark()
        assert get(k, "http://other.test/admin") == 200
        assert get(k, "http://allowed.test/nobody-asked") == 403
        assert requests_to(testnet, "other.test", mark) == [("other.test", "/admin")]
        assert requests_to(testnet, "allowed.test", mark) == []


# --- nbclient and papermill ----------------------------------------------------------------------

def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or "".join(out.get("traceback", [])) or out.get("evalue", ""))
    return "\n".join(text)


def test_nbclient_one_liner_runs_under_the_notebooks_metadata(spec_dir, testnet, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(spec_dir.parent))  # so nbclient finds the test kernel spec
    path = write_notebook(user_folder(tmp_path / "p") / "analysis.ipynb", {"allow_domains": ["other.test"]},
                          fetch_cell("http://other.test/nbclient", 200),
                          fetch_cell("http://allowed.test/nbclient", 403))
    nb = nbformat.read(str(path), as_version=4)
    mark = testnet.mark()
    NotebookClient(nb, kernel_name="awf-python", timeout=60, startup_timeout=120,
                   resources={"metadata": {"path": str(path.parent)}},
                   ).execute(env={"AWF_POLICY": json.dumps(nb.metadata.get("awf", {}))})
    out = _outputs(nb)
    assert "http://other.test/nbclient -> 200" in out and "http://allowed.test/nbclient -> 403" in out
    assert requests_to(testnet, "other.test", mark) == [("other.test", "/nbclient")]
    assert requests_to(testnet, "allowed.test", mark) == []


PARAMETERIZED = (
    'url = "http://other.test/default"  # replaced by papermill',
    "import requests\n"
    "r = requests.get(url, timeout=10)\n"
    "print(url, '->', r.status_code, r.text)\n"
    "r.raise_for_status()",
)


def _parameterized_notebook(path: pathlib.Path, awf: dict) -> pathlib.Path:
    write_notebook(path, awf, *PARAMETERIZED)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].metadata["tags"] = ["parameters"]
    nbformat.write(nb, str(path))
    return path


def test_papermill_runs_under_the_notebooks_metadata(spec_dir, testnet, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("JUPYTER_PATH", str(spec_dir.parent))
    monkeypatch.delenv("AWF_POLICY", raising=False)
    folder = user_folder(tmp_path / "p")
    src = _parameterized_notebook(folder / "in.ipynb", {"allow_domains": [".allowed.test"]})

    mark = testnet.mark()
    out = papermill.execute_notebook(str(src), str(folder / "out.ipynb"), engine_name="awf",
                                     kernel_name="awf-python", cwd=str(folder), progress_bar=False,
                                     parameters={"url": "http://api.allowed.test/papermill"})
    text = _outputs(nbformat.read(str(folder / "out.ipynb"), as_version=4))
    assert "http://api.allowed.test/papermill -> 200 hello from allowed.test" in text
    assert _outputs(out) == text
    assert requests_to(testnet, "allowed.test", mark) == [("api.allowed.test", "/papermill")]
    assert requests_to(testnet, "other.test", mark) == []  # the default was replaced

    # the parameter now points at a host the notebook does not declare
    mark = testnet.mark()
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(src), str(folder / "out2.ipynb"), engine_name="awf",
                                   kernel_name="awf-python", cwd=str(folder), progress_bar=False,
                                   parameters={"url": "http://other.test/papermill"})
    assert "403" in str(info.value) and "other.test" in str(info.value)
    assert "-> 403" in _outputs(nbformat.read(str(folder / "out2.ipynb"), as_version=4))
    assert requests_to(testnet, "other.test", mark) == []


def test_papermill_uses_the_in_memory_notebook(spec_dir, testnet, tmp_path, monkeypatch):
    """No file to read: the engine passes the executed notebook's own metadata."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("JUPYTER_PATH", str(spec_dir.parent))
    monkeypatch.delenv("AWF_POLICY", raising=False)
    folder = user_folder(tmp_path / "p")
    nb = nbformat.read(str(_parameterized_notebook(folder / "in.ipynb", {"allow_domains": ["allowed.test"]})),
                       as_version=4)
    nb.metadata.awf = {"allow_domains": ["other.test"]}  # the file on disk allows only allowed.test
    mark = testnet.mark()
    out = papermill.execute_notebook(nb, None, engine_name="awf", kernel_name="awf-python", cwd=str(folder),
                                     progress_bar=False, parameters={"url": "http://other.test/in-memory"})
    assert "http://other.test/in-memory -> 200" in _outputs(out)
    assert requests_to(testnet, "other.test", mark) == [("other.test", "/in-memory")]
    assert requests_to(testnet, "allowed.test", mark) == []


# --- bad metadata in the notebook file ---------------------------------------------------------

@pytest.mark.parametrize(("awf", "names"), [
    ({"allow_domains": ["*"]}, "'*'"),
    ({"allow_domains": "allowed.test"}, "allow_domains: must be a list"),
    ({"allow_domain": ["allowed.test"]}, "'allow_domain'"),
    ({"allow_domains": ["allowed.test\nhttp_access allow all"]}, "http_access allow all"),
    ({"allow_domains": ["allowed.test"], "block_domains": ["https://blocked.test/"]}, "'https://blocked.test/'"),
    ({"allow_domains": ["@no-such-preset"]}, "@no-such-preset"),
    (["allowed.test"], "must be a JSON object"),
], ids=["star", "string-not-list", "typo-key", "squid-injection", "url-in-block", "unknown-preset", "not-object"])
def test_bad_notebook_metadata_stops_the_kernel(spec_dir, docker_client, tmp_path, awf, names):
    nb = write_notebook(user_folder(tmp_path / "p") / "bad.ipynb", awf, "print('never runs')")
    km = manager(spec_dir)
    msg = str(refused(km, PolicyError, env={"JPY_SESSION_NAME": str(nb)}, cwd=str(nb.parent)))
    assert names in msg, msg
    assert str(nb) in msg and "metadata awf" in msg  # which notebook, which part of it
    nothing_left(docker_client, km)
