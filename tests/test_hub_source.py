"""The hub model source through the real ``huggingface_hub`` client, against a Hub that
this module serves on 127.0.0.1 (``HF_ENDPOINT`` points at it): a fetch that runs a
suite, a revision pin, a missing repository or revision, a repository with only pickled
weights, a Hub that is down, offline mode. Then the references a model source is named
by: a blank one, ``local:/absolute/path``, and run-time errors that name the suite file
and the ``[[models]]`` entry. No network beyond loopback.

The client reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import, and the tests'
own process has them fixed (conftest sets ``HF_HUB_OFFLINE=1``), so every fetch runs in
a child process with its own environment."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.errors import UserError
from harness.models import resolve_reference, resolve_suite_models
from harness.plugins import PluginHost
from harness.suite import load_suite

from .conftest import MC_ROWS, write_jsonl

REPO = Path(__file__).resolve().parents[1]


class FakeHub:
    """Model repositories as ``{repo_id: {"refs": {name: sha}, "commits": {sha: {path: bytes}}}}``,
    served the way the Hub's HTTP API serves them to ``snapshot_download``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []

    def add(self, repo_id: str, ref: str, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["refs"][ref] = sha
        repo["commits"][sha] = files
        return sha

    def lookup(self, repo_id: str, revision: str) -> tuple[int, str, str | None]:
        """(status, X-Error-Code, commit sha)."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, "RepoNotFound", None
        sha = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        return (200, "", sha) if sha else (404, "RevisionNotFound", None)


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the request list is the log
            pass

        def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def missing(self, code: str) -> None:
            self.reply(404, json.dumps({"error": code}).encode(),
                       {"X-Error-Code": code, "Content-Type": "application/json"})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append(f"{self.command} {path}")
            if match := _API.match(path):
                status, code, sha = hub.lookup(match["repo"], unquote(match["rev"]))
                if sha is None:
                    return self.missing(code)
                files = hub.repos[match["repo"]]["commits"][sha]
                if match["kind"] == "revision":
                    body = {"id": match["repo"], "sha": sha, "private": False,
                            "siblings": [{"rfilename": name} for name in files]}
                else:
                    body = [{"type": "file", "path": name, "size": len(data),
                             "oid": hashlib.sha1(data).hexdigest()} for name, data in files.items()]
                return self.reply(200, json.dumps(body).encode(),
                                  {"Content-Type": "application/json"})
            if match := _RESOLVE.match(path):
                status, code, sha = hub.lookup(match["repo"], unquote(match["rev"]))
                if sha is None:
                    return self.missing(code)
                data = hub.repos[match["repo"]]["commits"][sha].get(unquote(match["file"]))
                if data is None:
                    return self.missing("EntryNotFound")
                return self.reply(200, data, {
                    "Content-Type": "application/octet-stream", "X-Repo-Commit": sha,
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
            self.missing("NotFound")

        do_HEAD = do_GET

    return Handler


@pytest.fixture(scope="module")
def model_files(tiny_model_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tiny_model_path.iterdir()) if p.is_file()}


@pytest.fixture()
def hub(model_files):
    """A Hub on 127.0.0.1 holding ``org/tiny`` (``main``, and tag ``v1`` with other content)
    and ``org/pickled`` (config and tokenizer, weights only as ``pytorch_model.bin``)."""
    fake = FakeHub()
    fake.v1 = fake.add("org/tiny", "v1", {**model_files, "revision.txt": b"v1"})
    # main also holds a pickled copy of the weights, which must never be fetched
    fake.main = fake.add("org/tiny", "main", {**model_files, "revision.txt": b"main",
                                              "pytorch_model.bin": b"\x80\x04pickle"})
    pickled = {name: data for name, data in model_files.items()
               if not name.endswith(".safetensors")}
    fake.add("org/pickled", "main", {**pickled, "pytorch_model.bin": b"\x80\x04pickle"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def _env(tmp_path: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    """The child's environment: this Hub, a fresh HF cache, no proxy, no token."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "NO_PROXY": "127.0.0.1,localhost",
                "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1",
                "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"})
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _suite(root: Path, source: str) -> Path:
    write_jsonl(root / "data" / "mc.jsonl", MC_ROWS)
    path = root / "suite.toml"
    path.write_text(f"""
[suite]
name = "hubsuite"
store = "results/hub.duckdb"

[[models]]
name = "tiny"
source = "{source}"

[[evaluators]]
name = "mc"
kind = "benchmark"
data = "data/mc.jsonl"
role = "general"

[backend]
kind = "hf"
options = {{ batch_size = 4 }}
""", encoding="utf-8")
    return path


def _harness(tmp_path: Path, endpoint: str, *args: str,
             offline: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path,
                          env=_env(tmp_path, endpoint, offline), capture_output=True, text=True,
                          timeout=600)


_RESOLVE_SCRIPT = """
import json, sys
from pathlib import Path
from harness.models import resolve_reference
from harness.plugins import PluginHost
host = PluginHost.load(entry_points=False)
print(json.dumps({ref: str(resolve_reference("m", ref, host, Path.cwd()).path)
                  for ref in sys.argv[1:]}))
"""


def _resolve(tmp_path: Path, endpoint: str, *refs: str, offline: bool = False) -> dict[str, Path]:
    done = subprocess.run([sys.executable, "-c", _RESOLVE_SCRIPT, *refs], cwd=tmp_path,
                          env=_env(tmp_path, endpoint, offline), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return {ref: Path(path) for ref, path in json.loads(done.stdout).items()}


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("harness: error: "), lines[0]
    return lines[0]


def test_a_fetched_hub_model_runs_a_suite(tmp_path, hub):
    suite = _suite(tmp_path, "hub:org/tiny")
    done = _harness(tmp_path, hub.endpoint, "run", str(suite))
    assert done.returncode == 0, (done.stdout, done.stderr)
    folder = next((tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots").iterdir())
    assert folder.name == hub.main
    assert {"config.json", "model.safetensors", "revision.txt"} <= {
        p.name for p in folder.iterdir()}
    # weights only as safetensors: the pickled copy beside them is never asked for
    assert not (folder / "pytorch_model.bin").exists()
    assert not any(r.endswith("pytorch_model.bin") for r in hub.requests), hub.requests
    assert (tmp_path / "results" / "hub.duckdb").is_file()


def test_a_revision_pin_gets_that_revisions_files_and_the_cache_serves_offline(tmp_path, hub):
    refs = ["hub:org/tiny", "hub:org/tiny@v1", f"hub:org/tiny@{hub.v1}", "hub:org/tiny@main"]
    paths = _resolve(tmp_path, hub.endpoint, *refs)
    assert [(paths[r] / "revision.txt").read_text() for r in refs] == ["main", "v1", "v1", "main"]
    assert paths["hub:org/tiny@v1"].name == hub.v1
    # fetched once, then found in the cache with the hub out of reach
    again = _resolve(tmp_path, hub.endpoint, "hub:org/tiny@v1", offline=True)
    assert again["hub:org/tiny@v1"] == paths["hub:org/tiny@v1"]


@pytest.mark.parametrize("source, message", [
    ("hub:org/missing", "no model repository 'org/missing' on the hub at {hub} "
                        "(or it is private or gated: log in with `hf auth login`)"),
    ("hub:org/tiny@nope", "the hub repository 'org/tiny' has no revision "
                          "'nope' (a branch, tag or commit)"),
    ("hub:org/pickled", "the hub repository 'org/pickled' has no .safetensors "
                        "weights; harness loads weights only as safetensors (pickled "
                        ".bin/.pt files can run code when loaded)"),
    ("hub:not a repo id", "not a hub repository id ('org/name', optionally "
                          "'@revision'):"),
])
def test_a_hub_model_that_cannot_be_fetched_is_one_line(tmp_path, hub, source, message):
    suite = _suite(tmp_path, source)
    line = _one_error_line(_harness(tmp_path, hub.endpoint, "run", str(suite)))
    assert "[[models]]" in line
    assert "('tiny') field 'source': " + message.format(hub=hub.endpoint) in line
    assert not (tmp_path / "results").exists()
    # pickled weights are refused without being downloaded
    assert not any(r.endswith("pytorch_model.bin") for r in hub.requests), hub.requests


def test_a_hub_that_is_down_is_one_line(tmp_path):
    with socket.socket() as probe:  # a loopback port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    suite = _suite(tmp_path, "hub:org/tiny")
    line = _one_error_line(_harness(tmp_path, endpoint, "run", str(suite)))
    assert "[[models]]" in line
    assert (f"('tiny') field 'source': cannot reach the hub at "
            f"{endpoint}, and 'org/tiny' is not in the local cache") in line
    assert not (tmp_path / "results").exists()


def test_offline_mode_with_nothing_cached_is_one_line(tmp_path, hub):
    suite = _suite(tmp_path, "hub:org/tiny")
    line = _one_error_line(_harness(tmp_path, hub.endpoint, "run", str(suite), offline=True))
    assert "[[models]]" in line
    assert ("('tiny') field 'source': HF_HUB_OFFLINE is set and "
            "'org/tiny' is not in the local cache") in line
    assert hub.requests == []


@pytest.mark.parametrize("source", [" ", "\t", ""])
def test_a_blank_source_is_refused_by_validate(tmp_path, source):
    suite = _suite(tmp_path, source)
    result = CliRunner().invoke(main, ["validate", str(suite)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"harness: error: {suite}: [[models]] #1 ('tiny') field 'source': "
        "String should have at least 1 character"]


def test_local_takes_an_absolute_path(tmp_path, tiny_model_path):
    host = PluginHost.load(entry_points=False)
    for reference in (f"local:{tiny_model_path}", str(tiny_model_path)):
        model = resolve_reference("tiny", reference, host, tmp_path)
        assert model.path == tiny_model_path
        assert model.source == reference


def test_a_missing_local_folder_names_the_suite_file_and_field(tmp_path):
    missing = tmp_path / "no-such-model"
    suite = _suite(tmp_path, f"local:{missing}")
    host = PluginHost.load(entry_points=False)
    with pytest.raises(UserError) as caught:
        resolve_suite_models(load_suite(suite, host), host)
    assert str(caught.value) == (f"{suite}: [[models]] #1 ('tiny') field 'source': "
                                 f"model folder not found: {missing}")


def test_a_missing_local_folder_is_one_line_on_run(tmp_path):
    missing = tmp_path / "no-such-model"
    suite = _suite(tmp_path, f"local:{missing}")
    result = CliRunner().invoke(main, ["run", str(suite)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    # not sent to the hub as an id
    assert "[[models]]" in lines[0] and lines[0].endswith(
        f"('tiny') field 'source': model folder not found: {missing}"), lines[0]
    assert not (tmp_path / "results").exists()


def _safety_suite(root: Path, options: str) -> Path:
    """The small suite's model with a safety evaluator, whose guard model the host resolves."""
    write_jsonl(root / "data" / "safety.jsonl", [{"prompt": "Say hello.", "harmful": False}])
    path = _suite(root, "builtin:tiny-random")
    path.write_text(path.read_text() + f"""
[[evaluators]]
name = "safe"
kind = "safety"
data = "data/safety.jsonl"
role = "safety"
options = {{ {options} }}
""", encoding="utf-8")
    return path


def test_an_evaluators_missing_model_names_the_suite_file_and_entry(tmp_path, tiny_model_path):
    missing = tmp_path / "no-such-guard"
    suite = _safety_suite(tmp_path, f'guard = "local:{missing}", max_new_tokens = 4')
    result = CliRunner().invoke(main, ["run", str(suite)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"harness: error: {suite}: [[evaluators]] #2 ('safe') field 'options': the guard model "
        f"'local:{missing}': model folder not found: {missing}"]
    assert not (tmp_path / "results").exists()


def test_the_default_hub_guard_with_the_hub_down_is_one_line(tmp_path, tiny_model_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    suite = _safety_suite(tmp_path, "max_new_tokens = 4")  # guard: a hub model by default
    line = _one_error_line(_harness(tmp_path, endpoint, "run", str(suite)))
    assert line.startswith(
        f"harness: error: {suite}: [[evaluators]] #2 ('safe') field 'options': the guard model "
        f"'hub:meta-llama/Llama-Guard-3-1B': cannot reach the hub at {endpoint}, and "
        "'meta-llama/Llama-Guard-3-1B' is not in the local cache"), line
    assert not (tmp_path / "results").exists()
